"""The agent: runs inside a site, drives the FeatureCloud app and talks to the relay."""
