"""Reads the metric rows of `ncu --csv --print-units base --metrics ...` output (the scripts in tools/dev that
profile with --metrics import it; non-CSV lines such as the profiled program's own output are skipped)."""

import csv


def per_launch(lines) -> dict[int, tuple[str, dict[str, float]]]:
    """Launch ID -> (kernel name, {metric name: value}); values as floats ("1,234" in some ncu versions)."""
    launches: dict[int, tuple[str, dict[str, float]]] = {}
    for row in csv.DictReader(line for line in lines if line.startswith('"')):
        _, metrics = launches.setdefault(int(row["ID"]), (row["Kernel Name"], {}))
        metrics[row["Metric Name"]] = float(row["Metric Value"].replace(",", ""))
    return launches
