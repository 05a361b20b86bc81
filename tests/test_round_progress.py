"""The terminal's progress bar counts the federation's rounds, not site-rounds: a round is done once every
site has finished it (`fedgrove_cli.run_commands.round_progress`)."""

from __future__ import annotations

from fedgrove_cli.run_commands import rounds_every_site_finished


def test_a_round_counts_once_every_site_has_finished_it() -> None:
    assert rounds_every_site_finished({}, 3) == 0
    assert rounds_every_site_finished({"site-1": 4, "site-2": 4}, 3) == 0  # site-3 has not reported yet
    assert rounds_every_site_finished({"site-1": 5, "site-2": 4, "site-3": 4}, 3) == 4
    assert rounds_every_site_finished({"site-1": 50, "site-2": 50, "site-3": 50}, 3) == 50


def test_resumed_sites_count_from_where_they_stopped() -> None:
    assert rounds_every_site_finished({"site-1": 41, "site-2": 40}, 2) == 40
