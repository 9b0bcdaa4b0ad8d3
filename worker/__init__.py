"""The GPU worker: claims runs from the server and executes them with dlite."""
