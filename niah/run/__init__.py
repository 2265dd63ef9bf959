"""Running a grid: config, plan, endpoints, the cell pipeline, rounds, reuse, progress."""
