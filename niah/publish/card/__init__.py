"""The model card (`card.md`): matrix, method, launches, per-length verdicts, reproduce command."""

from niah.publish.card.document import CARD_NAME, render_card, write_card

__all__ = ["CARD_NAME", "render_card", "write_card"]
