"""Measurement: latency (bench), agreement with the host (verify, reference), the device's
facts (hostinfo), and the one definition of the reports they write (report_contract)."""
