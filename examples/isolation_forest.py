#!/usr/bin/env python3
"""A machine-learning baseline on a drill's dataset: an IsolationForest (scikit-learn) trained on
normal rows, compared with the agent's own detector and the SQL |z| flags on the same rows.

    target/ml-venv/bin/python examples/isolation_forest.py target/detection/drill.parquet [--json]

Input: a Parquet file written by `feature-lab export --format parquet --normalized` (what
`cargo xtask detection` leaves in target/detection/drill.parquet). The features are what the SQL
layer scores: every gauge and eBPF count as it is, every cumulative counter as its per-interval
delta (`<counter>_delta`). Rows still in the agent's warm-up (anomaly_score NULL) are left out,
so the three detectors are judged on the same rows.

Training: the first half of the normal rows (attack = 0), in time order, with their NULLs filled
by the training median; the model then scores every later row, normal or attack, and a row is
flagged when the model calls it an outlier. So the false alarms counted are on rows the model has
not seen, as a detector switched on after a learning period would meet them.

Pod rows (`feature-lab export --pods --format parquet`, which `cargo xtask detection` leaves in
target/detection/drill-pods.parquet) are recognised by their `kind` column: one model per
workload (as the agent keeps one baseline per workload), on its pods' and services' rows; the
"other" row and workloads with fewer than 10 normal rows before the split are left out. The
agent's detector is its verdict on those same pod rows. False alarms per node-hour count every
flagged pod row of a normal interval, over the normal intervals.
"""
import argparse
import json
import sys

import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest

META = ["node", "ts", "attack", "attack_type", "anomaly_score", "anomalous_features"]
POD_META = META + ["kind", "owner", "namespace", "pod", "qos", "network", "workload"]


def feature_columns(df):
    """Gauges and eBPF counts as they are, counters as their deltas (the `_delta` columns)."""
    deltas = {c[: -len("_delta")] for c in df.columns if c.endswith("_delta")}
    raw = [c for c in df.columns if c not in POD_META and not c.startswith("z_") and not c.endswith("_delta")]
    return [f"{c}_delta" if c in deltas else c for c in raw]


def scores(flagged, attack):
    tp = int((flagged & attack).sum())
    fp = int((flagged & ~attack).sum())
    fn = int((~flagged & attack).sum())
    normal = int((~attack).sum())
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
    rate = fp / normal if normal else None
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "false_alarm_rate": rate,
        "false_alarms_per_hour_at_10s": None if rate is None else rate * 360,
    }


def pod_rows(df):
    """Per workload, an IsolationForest trained on the first half of its normal rows; returns
    (rows scored, the IsolationForest's verdicts, the number of normal intervals scored)."""
    df = df[(df["kind"] != "other") & df["anomaly_score"].notna()].sort_values(["ts"]).reset_index(drop=True)
    cols = feature_columns(df)
    normal_ts = np.sort(df.loc[df["attack"] != 1, "ts"].unique())
    if len(normal_ts) < 20:
        sys.exit(f"only {len(normal_ts)} normal intervals with judged pod rows: too few to train on")
    split = normal_ts[len(normal_ts) // 2]
    flagged = pd.Series(False, index=df.index)
    scored = pd.Series(False, index=df.index)
    for _, rows in df.groupby("workload"):
        x = rows[cols].astype("float64")
        train = x[(rows["ts"] < split) & (rows["attack"] != 1)]
        if len(train) < 10:
            continue
        medians = train.median()
        model = IsolationForest(n_estimators=100, contamination="auto", random_state=0)
        model.fit(train.fillna(medians).fillna(0.0).to_numpy())
        later = rows["ts"] >= split
        scored[rows.index[later]] = True
        flagged[rows.index[later]] = model.predict(x[later].fillna(medians).fillna(0.0).to_numpy()) == -1
    keep = scored.to_numpy()
    df = df[keep].reset_index(drop=True)
    return df, flagged.to_numpy()[keep], int((normal_ts >= split).sum()), len(cols)


def per_interval(result, normal_intervals):
    """False alarms per node-hour at 10 s when each flagged pod row is one alarm."""
    for s in result.values():
        if isinstance(s, dict):
            s["false_alarms_per_hour_at_10s"] = s["fp"] / normal_intervals * 360 if normal_intervals else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parquet")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--sql-threshold", type=float, default=2.0)
    args = ap.parse_args()

    df = pd.read_parquet(args.parquet).sort_values(["node", "ts"]).reset_index(drop=True)
    if "kind" in df.columns:
        rows, flagged_if, normal_intervals, n_cols = pod_rows(df)
        attack = rows["attack"].to_numpy() == 1
        detector = rows["anomalous_features"].map(lambda l: l is not None and len(l) > 0).to_numpy()
        result = {
            "rows": len(rows),
            "attack_rows": int(attack.sum()),
            "features": n_cols,
            "normal_intervals": normal_intervals,
            "detector": scores(detector, attack),
            "isolation_forest": scores(flagged_if, attack),
        }
        per_interval(result, normal_intervals)
        report(result, args, [("agent pod verdicts", "detector"), ("IsolationForest per workload", "isolation_forest")])
        return
    df = df[df["anomaly_score"].notna()].reset_index(drop=True)
    if df.empty:
        sys.exit("no judged rows (every row is in the agent's warm-up)")
    cols = feature_columns(df)
    x = df[cols].astype("float64")
    attack = df["attack"].to_numpy() == 1

    normal_idx = np.flatnonzero(~attack)
    if len(normal_idx) < 10:
        sys.exit(f"only {len(normal_idx)} normal rows: too few to train on")
    split = normal_idx[len(normal_idx) // 2]
    train = x.iloc[normal_idx[normal_idx < split]]
    medians = train.median()
    model = IsolationForest(n_estimators=200, contamination="auto", random_state=0)
    model.fit(train.fillna(medians).fillna(0.0).to_numpy())

    test = df.index >= split
    flagged_if = model.predict(x.fillna(medians).fillna(0.0).to_numpy()) == -1
    detector = df["anomalous_features"].map(lambda l: l is not None and len(l) > 0).to_numpy()
    z_cols = [c for c in df.columns if c.startswith("z_")]
    if z_cols:
        sql = (df[z_cols].abs() > args.sql_threshold).any(axis=1).to_numpy()
    else:
        sql = np.zeros(len(df), dtype=bool)

    result = {
        "rows": int(test.sum()),
        "attack_rows": int((attack & test).sum()),
        "features": len(cols),
        "detector": scores(detector[test], attack[test]),
        f"sql_abs_z_gt_{args.sql_threshold:g}": scores(sql[test], attack[test]),
        "isolation_forest": scores(flagged_if[test], attack[test]),
    }
    report(
        result,
        args,
        [
            ("agent detector", "detector"),
            (f"SQL \\|z\\|>{args.sql_threshold:g}", f"sql_abs_z_gt_{args.sql_threshold:g}"),
            ("IsolationForest", "isolation_forest"),
        ],
    )


def report(result, args, detectors):
    if args.json:
        print(json.dumps(result, indent=2))
        return
    fmt = lambda v, d=2: "-" if v is None else f"{v:.{d}f}"
    print(f"{result['rows']} rows after the training half ({result['attack_rows']} attack), {result['features']} features")
    print("| detector | precision | recall | F1 | false alarms | per node-hour at 10 s |")
    print("|---|---|---|---|---|---|")
    for name, key in detectors:
        s = result[key]
        print(
            f"| {name} | {fmt(s['precision'])} | {fmt(s['recall'])} | {fmt(s['f1'])} | {s['fp']} | "
            f"{fmt(s['false_alarms_per_hour_at_10s'], 1)} |"
        )


if __name__ == "__main__":
    main()
