"""The supervisor process: probes every worker, reports the hung, samples health."""
