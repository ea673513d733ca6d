"""Tests of semiseg_helpers.data."""
