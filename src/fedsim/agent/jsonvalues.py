"""Take a JSON value apart into its numbers and a skeleton, and put it back together.

Secure aggregation and differential privacy work on a flat vector of numbers; the app sent,
and must get back, a nested JSON value of the same shape. The skeleton is the shape with
every number replaced by its kind ("int" or "float"); it reveals no value.
"""

from __future__ import annotations

from typing import Any

Skeleton = Any


class ShapeError(ValueError):
    pass


def flatten(value: Any) -> tuple[Skeleton, list[float | int]]:
    numbers: list[float | int] = []

    def walk(node: Any) -> Skeleton:
        if isinstance(node, bool) or node is None or isinstance(node, str):
            raise ShapeError(f"only numbers can be aggregated or noised, not {node!r}")
        if isinstance(node, int | float):
            numbers.append(node)
            return "int" if isinstance(node, int) else "float"
        if isinstance(node, list):
            return [walk(item) for item in node]
        if isinstance(node, dict):
            return {key: walk(node[key]) for key in sorted(node)}
        raise ShapeError(f"cannot handle a JSON value of type {type(node).__name__}")

    return walk(value), numbers


def unflatten(skeleton: Skeleton, numbers: list[float | int]) -> Any:
    position = 0

    def walk(node: Skeleton) -> Any:
        nonlocal position
        if isinstance(node, list):
            return [walk(item) for item in node]
        if isinstance(node, dict):
            return {key: walk(item) for key, item in node.items()}
        number = numbers[position]
        position += 1
        return round(number) if node == "int" else float(number)

    value = walk(skeleton)
    if position != len(numbers):
        raise ShapeError(f"{len(numbers)} numbers for a shape that holds {position}")
    return value


def count_numbers(skeleton: Skeleton) -> int:
    """How many numbers a skeleton holds; ShapeError when it is not a skeleton at all
    (it may come from another site, so it is checked before it shapes a sum)."""
    if isinstance(skeleton, list):
        return sum(count_numbers(item) for item in skeleton)
    if isinstance(skeleton, dict):
        return sum(count_numbers(item) for item in skeleton.values())
    if skeleton in ("int", "float"):
        return 1
    raise ShapeError(f"{skeleton!r} is not a number's kind")


def merge_skeletons(first: Skeleton, second: Skeleton) -> Skeleton:
    """Same shape required; a leaf is an int only where every contribution was an int."""
    if isinstance(first, list) and isinstance(second, list) and len(first) == len(second):
        return [merge_skeletons(a, b) for a, b in zip(first, second, strict=True)]
    if isinstance(first, dict) and isinstance(second, dict) and first.keys() == second.keys():
        return {key: merge_skeletons(first[key], second[key]) for key in first}
    if isinstance(first, str) and isinstance(second, str):
        return "int" if first == second == "int" else "float"
    raise ShapeError("sites sent values of different shapes for the same aggregation")
