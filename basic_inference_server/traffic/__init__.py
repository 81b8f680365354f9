"""Traffic management: versions, weighted and sticky routing, rollouts, breakers, shadow
traffic, remote endpoints and pipelines (docs/traffic.md)."""
