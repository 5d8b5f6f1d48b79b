"""JoinedUp population domain."""
