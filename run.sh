#!/usr/bin/env bash
# Keep the gateway container running; pull the newest image at every start.
#
# POST /shutdown {"SIGNATURE": "SAFE_KILL_SERVER_CMD"} drains the gateway and exits
# the container; this loop then starts it again on the freshly pulled image (hot update).
#   nohup ./run.sh <account>/<repo> &
IMAGE="${1:-${BIS_IMAGE:?usage: ./run.sh <image> (or set BIS_IMAGE)}}"
PORTS="${BIS_PORTS:-5002-5010}"
VOLUME="${BIS_VOLUME:-ai_vol}"

# The admin token goes by variable name only (`-e BIS_ADMIN_TOKEN`): docker reads its
# value from this script's environment, so it never shows on a command line. Without
# one, the gateway generates a token into the volume: _cache/admin_token.
while true; do
    docker run --pull=always -p "$PORTS:$PORTS" -v "$VOLUME:/aid_app/_cache" \
        ${BIS_ADMIN_TOKEN:+-e BIS_ADMIN_TOKEN} "$IMAGE"
    code=$?
    if [ "$code" = "78" ]; then
        # Exit code 78: the configuration in the image is invalid; do not spin.
        # (also a _cache volume owned by another user: the log names the chown to run).
        echo "run.sh: configuration error in $IMAGE (exit 78); retrying in 60 s" >&2
        sleep 60
    else
        sleep 5
    fi
done
