"""Shipping a deployment: plan and send a release, install the runner, bench and verify there."""
