"""Multidisciplinary team reviews: `service` the review requests, their meetings and recorded decisions; `routes` their
API and pages.
"""
