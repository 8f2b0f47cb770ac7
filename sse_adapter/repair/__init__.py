"""What turns upstream payloads into the payloads to send, and client requests into
upstream ones: all pure, no I/O."""
