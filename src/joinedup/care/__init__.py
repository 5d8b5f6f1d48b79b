"""JoinedUp care domain."""
