"""MoE workloads: model zoo, routing generators, routing traces."""
