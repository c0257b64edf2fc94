"""Jupyter kernels: launch, the wire (message decoding), the process, a kernel session and the
IOPub -> nbformat output accumulator."""
