"""Virtual wards: `service` remote monitoring with limits, readings and alerts; `routes` their API and pages.
"""
