"""SimKernel: a simulated Linux 6.18 kernel that implements the Kernel protocol."""
