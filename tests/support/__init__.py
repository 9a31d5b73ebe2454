"""Helpers shared by the test suites (servers, gateways, catalogs, backends)."""
