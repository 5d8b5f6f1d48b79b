"""JoinedUp: an open integrated care platform for people living with multimorbidity."""

__version__ = "0.1.0"
