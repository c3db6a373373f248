"""Markdown tables: header rule, one line per row, pipes inside cells escaped."""

from codegen2_jax.experiments import tables


def test_markdown_table_escapes_pipes_inside_cells():
    text = tables.markdown(("name", "value"), [("a|b", 1), ("c", "2.5")])
    assert text.splitlines() == [
        "| name | value |",
        "| --- | --- |",
        "| a\\|b | 1 |",
        "| c | 2.5 |",
    ]
