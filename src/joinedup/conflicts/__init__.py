"""JoinedUp conflicts domain."""
