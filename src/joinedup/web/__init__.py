"""JoinedUp web domain."""
