"""A graph with planted communities, for tests and the ``make twhin`` chain.

    python -m projects.twhin.data.generate --config_path CFG --num_edges 20000 \
        [--output_dir DIR] [--num_files 2] [--communities 8] [--noise 0.1] [--seed 0]

(installed as ``tml-twhin-generate``). Entity ``i`` of every table belongs to community
``i % communities``. An edge picks a relation uniformly, its lhs uniformly from the lhs table,
and its rhs uniformly among the rhs table's entities of the lhs's community (with probability
``noise``, from the whole table). A model that learns the communities ranks an edge's rhs above
random entities about ``1 - 1/communities`` of the time; a random one half the time.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from projects.twhin.config import TwhinConfig
from projects.twhin.data.edges import COLUMNS, Edges, Graph
from projects.twhin.model.config import TwhinModelConfig
from tml.core.cli import exit_status
from tml.core.config import load_config_from_yaml
from tml.core.errors import UserInputError
from tml.storage import as_path


def generate_edges(
    model: TwhinModelConfig, num_edges: int, *, communities: int, noise: float, seed: int
) -> Edges:
    """``num_edges`` edges over the model's tables and relations with planted communities.

    Raises:
        UserInputError: a table with fewer rows than communities.
    """
    graph = Graph.of(model)
    small = [
        n for n, rows in zip(graph.table_names, graph.table_rows, strict=True) if rows < communities
    ]
    if small:
        raise UserInputError(f"tables {small} have fewer rows than the {communities} communities")
    generator = np.random.default_rng(seed)
    rel = generator.integers(0, len(graph.relation_names), num_edges)
    sides = np.asarray(graph.relation_tables)[rel]
    rows = np.asarray(graph.table_rows)
    lhs_rows, rhs_rows = rows[sides[:, 0]], rows[sides[:, 1]]
    lhs = (generator.random(num_edges) * lhs_rows).astype(np.int64)
    community = lhs % communities
    # Members of community c in a table of n rows: c, c + C, ..., below n.
    members = (rhs_rows - community + communities - 1) // communities
    rhs = community + communities * (generator.random(num_edges) * members).astype(np.int64)
    anywhere = generator.random(num_edges) < noise
    rhs[anywhere] = (generator.random(int(anywhere.sum())) * rhs_rows[anywhere]).astype(np.int64)
    return Edges(lhs=lhs, rel=rel.astype(np.int64), rhs=rhs)


def write_edges(edges: Edges, output_dir: str, num_files: int = 1) -> list[str]:
    """Writes ``edges`` as ``part-NNNNN.parquet`` files of about equal size; returns the paths."""
    folder = as_path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, rows in enumerate(np.array_split(np.arange(len(edges)), num_files)):
        table = pa.table({name: getattr(edges, name)[rows] for name in COLUMNS})
        path = folder / f"part-{index:05d}.parquet"
        with path.open("wb") as file:
            pq.write_table(table, file)
        paths.append(str(path))
    return paths


def main(argv: list[str] | None = None) -> int:
    """Writes a planted-community graph for a TwHIN config's tables and relations."""
    parser = argparse.ArgumentParser(
        prog="tml-twhin-generate", description="Write a graph with planted communities."
    )
    parser.add_argument("--config_path", required=True, help="TwHIN YAML config.")
    parser.add_argument("--num_edges", type=int, required=True, help="Edges to write.")
    parser.add_argument(
        "--output_dir",
        help="Folder of the Parquet files (default: the folder of train_data.data_root).",
    )
    parser.add_argument("--num_files", type=int, default=1, help="Files to split them into.")
    parser.add_argument("--communities", type=int, default=8, help="Planted communities.")
    parser.add_argument("--noise", type=float, default=0.1, help="Share of random rhs nodes.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the graph.")
    args = parser.parse_args(argv)

    def generate() -> None:
        config = load_config_from_yaml(TwhinConfig, args.config_path)
        output_dir = args.output_dir or os.path.dirname(config.train_data.data_root)
        edges = generate_edges(
            config.model,
            args.num_edges,
            communities=args.communities,
            noise=args.noise,
            seed=args.seed,
        )
        paths = write_edges(edges, output_dir, args.num_files)
        print(f"wrote {len(edges)} edges to {len(paths)} files in {output_dir}")

    return exit_status(generate)


if __name__ == "__main__":
    sys.exit(main())
