"""Health sampling: memory, disk and GPU of the box and of the process tree."""
