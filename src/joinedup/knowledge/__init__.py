"""JoinedUp knowledge domain."""
