"""JoinedUp record domain."""
