"""Publishing from results alone, never launching: verdicts, statistics, report, card, compare."""
