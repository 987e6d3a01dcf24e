"""canarylab: the command line, and the local cluster that runs k8s/ without Kubernetes."""
