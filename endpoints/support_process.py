"""Support process: reports this box's memory and disk to the gateway every PING_INTERVAL.

Started by the gateway as ``python support_process.py --config_endpoint '<json>'``; the
JSON carries SERVER, SERVER_PORT, SERVER_PATH and SUPPORT_NAME (where to report).
"""

import argparse
import json
import threading
import urllib.request

import psutil

import basic_inference_server as bis

GB = 1024 ** 3


def collect() -> dict:
    vm = psutil.virtual_memory()
    disk = psutil.disk_usage("/")
    return {
        "total_memory": round(vm.total / GB, 3),
        "available_memory": round(vm.available / GB, 3),
        "system_used_memory": round(vm.used / GB, 3),
        "total_disk": round(disk.total / GB, 3),
        "available_disk": round(disk.free / GB, 3),
    }


def report(config: dict, log: bis.Logger) -> None:
    url = f"http://{config['SERVER']}:{config['SERVER_PORT']}{config['SERVER_PATH']}"
    data = json.dumps({"SIGNATURE": config["SUPPORT_NAME"], **collect()}).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            resp.read()
    except OSError as exc:
        log.P(f"could not report to {url}: {exc}", color="r")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config_endpoint", default="{}")
    config = json.loads(parser.parse_args().config_endpoint)
    log = bis.Logger(lib_name="SPRC")
    interval = float(config.get("PING_INTERVAL", 10))
    stop = threading.Event()
    log.P(f"support process {config.get('SUPPORT_NAME')} reporting every {interval:g} s")
    while not stop.wait(interval):
        report(config, log)


if __name__ == "__main__":
    main()
