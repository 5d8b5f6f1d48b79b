"""The person's journey: `service` where the person is in the system (encounters, episodes, what comes next);
`routes` its API and pages.
"""
