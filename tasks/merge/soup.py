"""The greedy soup (Wortsman et al. 2022, "Model soups", Recipe 1), which mergekit does not ship.

Rank the ingredients by their own selection loss; start the soup with the best; try the others in
that order and keep one only if the uniform average of the soup so far plus it has a lower
selection loss than the soup without it. The soup's test loss is reported beside, never used.

The loop is written over two callables so the stage can back them with its cached steps (each
candidate soup is a cached linear merge, each score a cached evaluation) and a test with plain
functions on tiny models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Soup = TypeVar("Soup")


@dataclass
class GreedySoup(Generic[Item, Soup]):
    """The chosen ingredients (in the order they joined), the soup made of them, its selection
    loss, and every step of the loop as `{"ingredient", "selection_loss", "kept"}`."""

    ingredients: list[Item]
    soup: Soup
    selection_loss: float
    steps: list[dict] = field(default_factory=list)


def greedy_soup(
    ranked: Sequence[tuple[Item, float]],
    make_soup: Callable[[list[Item]], Soup],
    selection_loss: Callable[[Soup], float],
    name: Callable[[Item], str] = str,
) -> GreedySoup[Item, Soup]:
    """`ranked`: (ingredient, its own selection loss). `make_soup(items)` returns the uniform soup of
    `items` (for one item: the item's own model); `selection_loss(soup)` scores it."""
    order = sorted(ranked, key=lambda pair: pair[1])
    (first, first_loss), rest = order[0], order[1:]
    chosen, soup, best = [first], make_soup([first]), first_loss
    steps = [{"ingredient": name(first), "selection_loss": first_loss, "kept": True}]
    for item, _ in rest:
        candidate = make_soup([*chosen, item])
        loss = selection_loss(candidate)
        kept = loss < best
        steps.append({"ingredient": name(item), "selection_loss": loss, "kept": kept})
        if kept:
            chosen, soup, best = [*chosen, item], candidate, loss
    return GreedySoup(ingredients=chosen, soup=soup, selection_loss=best, steps=steps)
