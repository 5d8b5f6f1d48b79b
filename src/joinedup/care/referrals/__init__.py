"""Referrals and advice-and-guidance conversations: `service` the ServiceRequest and its Communication thread (a
transition table for the conversation states, one builder for new and converted requests, response-time measures);
`routes` their API and pages.
"""
