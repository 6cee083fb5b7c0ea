"""The host layer: the only code that talks to the kernel (syscalls, ioctls, /proc)."""
