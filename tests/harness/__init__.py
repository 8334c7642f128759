"""Helpers shared by the end-to-end tests and the whole-process benchmarks: child processes with
logs (procs), Kubernetes manifests rendered and turned into local processes (manifests), and
several hosts on one machine in network namespaces (netns)."""
