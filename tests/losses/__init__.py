"""Tests of semiseg_helpers.losses."""
