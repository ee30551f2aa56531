#!/usr/bin/env python3
"""Generates labelqc's Grafana dashboards (grafana/dashboards/*.json) from this one file.

The JSON files are committed; edit this script, run it, and commit both. `--check` fails when a
committed file differs from what the script generates (CI runs it). Standard library only.

Every panel gets a unit, a description, thresholds and the `${datasource}` variable; rows follow
the data: input, then the numbers computed from it, then who needs attention, then the pipeline.
"""
import argparse
import json
import pathlib
import sys

OUT = pathlib.Path(__file__).resolve().parent.parent / "dashboards"
SCRAPE_CONFIG = pathlib.Path(__file__).resolve().parent.parent / "prometheus" / "prometheus.yml"

DS = {"type": "prometheus", "uid": "${datasource}"}

# Targets, also in the Prometheus alert rules (prometheus/rules/labelqc-alerts.yml).
ALPHA_TENTATIVE = 0.667  # Krippendorff (2004): tentative conclusions
ALPHA_RELIABLE = 0.8  # reliable
GOLD_TARGET = 0.8  # labelqc's drift.gold_target
GATE_THRESHOLD = 0.7  # labelqc's drift.gate_threshold

SCOPE = 'project=~"$project", task=~"$task", window="$window"'


def sample_limit():
    """The scrape's sample_limit in prometheus/prometheus.yml (the dashboards show it)."""
    for line in SCRAPE_CONFIG.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "sample_limit":
            return int(value.split("#")[0].strip())
    raise SystemExit(f"no sample_limit in {SCRAPE_CONFIG}")


SAMPLE_LIMIT = sample_limit()

OVERVIEW_UID = "labelqc-overview"
ANNOTATOR_UID = "labelqc-annotator"
PIPELINE_UID = "labelqc-pipeline"

GATE_COLOURS = {"allow": "green", "warmup": "blue", "probation": "orange", "block": "red"}


# ---------------------------------------------------------------------------------------------
# Building blocks


def steps(*pairs):
    """Threshold steps: a base colour, then (value, colour) pairs in increasing order."""
    base, *rest = pairs
    return {
        "mode": "absolute",
        "steps": [{"color": base, "value": None}] + [{"color": c, "value": v} for v, c in rest],
    }


ALPHA_STEPS = steps("red", (ALPHA_TENTATIVE, "orange"), (ALPHA_RELIABLE, "green"))
GOLD_STEPS = steps("red", (GOLD_TARGET, "green"))
COUNT_STEPS = steps("green")


def target(expr, legend="__auto", ref="A", instant=False, table=False):
    t = {
        "datasource": DS,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend,
        "range": not instant,
        "instant": instant,
        "refId": ref,
    }
    if table:
        t["format"] = "table"
    return t


def colour_override(name, colour):
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": "color", "value": {"fixedColor": colour, "mode": "fixed"}}],
    }


def panel(kind, title, description, unit, thresholds, targets, pos, *, options=None, custom=None,
          overrides=None, minimum=None, maximum=None, decimals=None, no_value=None, links=None,
          transformations=None, colour_mode="thresholds"):
    defaults = {
        "color": {"mode": colour_mode},
        "mappings": [],
        "thresholds": thresholds,
        "unit": unit,
    }
    if custom is not None:
        defaults["custom"] = custom
    for key, value in (("min", minimum), ("max", maximum), ("decimals", decimals), ("noValue", no_value)):
        if value is not None:
            defaults[key] = value
    p = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"h": pos[3], "w": pos[2], "x": pos[0], "y": pos[1]},
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": options or {},
        "repeatDirection": "h",
        "transparent": False,
    }
    if links:
        p["links"] = links
    if transformations:
        p["transformations"] = transformations
    return p


def reduce_options(calcs=("lastNotNull",)):
    return {"calcs": list(calcs), "fields": "", "values": False}


def stat(title, description, unit, thresholds, targets, pos, *, text_mode="value_and_name", **kw):
    options = {
        "colorMode": "background",
        "graphMode": "none",
        "justifyMode": "auto",
        "orientation": "auto",
        "reduceOptions": reduce_options(),
        "percentChangeColorMode": "standard",
        "showPercentChange": False,
        "textMode": text_mode,
        "wideLayout": True,
    }
    return panel("stat", title, description, unit, thresholds, targets, pos, options=options, **kw)


def bar_gauge(title, description, unit, thresholds, targets, pos, **kw):
    options = {
        "displayMode": "basic",
        "legend": {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": False},
        "maxVizHeight": 300,
        "minVizHeight": 16,
        "minVizWidth": 8,
        "namePlacement": "left",
        "orientation": "horizontal",
        "reduceOptions": reduce_options(),
        "showUnfilled": True,
        "sizing": "auto",
        "valueMode": "color",
    }
    return panel("bargauge", title, description, unit, thresholds, targets, pos, options=options, **kw)


def timeseries(title, description, unit, thresholds, targets, pos, *, lines="off", stack=False,
               bars=False, **kw):
    """A time series; `lines` draws the thresholds as target lines ("dashed") or not ("off")."""
    custom = {
        "axisBorderShow": False,
        "axisCenteredZero": False,
        "axisColorMode": "text",
        "axisLabel": "",
        "axisPlacement": "auto",
        "barAlignment": 0,
        "barWidthFactor": 0.6,
        "drawStyle": "bars" if bars else "line",
        "fillOpacity": 60 if stack or bars else 10,
        "gradientMode": "none",
        "hideFrom": {"legend": False, "tooltip": False, "viz": False},
        "insertNulls": False,
        "lineInterpolation": "linear",
        "lineWidth": 1,
        "pointSize": 4,
        "scaleDistribution": {"type": "linear"},
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if stack else "none"},
        "thresholdsStyle": {"mode": lines},
    }
    options = {
        "legend": {"calcs": ["lastNotNull"], "displayMode": "table", "placement": "right", "showLegend": True},
        "tooltip": {"hideZeros": False, "mode": "multi", "sort": "desc"},
    }
    kw.setdefault("colour_mode", "palette-classic")
    return panel("timeseries", title, description, unit, thresholds, targets, pos, options=options,
                 custom=custom, **kw)


def table(title, description, unit, thresholds, targets, pos, **kw):
    custom = {
        "align": "auto",
        "cellOptions": {"type": "color-text"},
        "filterable": True,
        "inspect": False,
    }
    options = {
        "cellHeight": "sm",
        "frameIndex": 0,
        "showTypeIcons": False,
        "footer": {"countRows": False, "fields": "", "reducer": ["sum"], "show": False},
        "showHeader": True,
        "sortBy": [{"desc": True, "displayName": "worst score"}],
    }
    return panel("table", title, description, unit, thresholds, targets, pos, options=options,
                 custom=custom, **kw)


def row(title, y, collapsed=False, panels=None):
    r = {
        "type": "row",
        "title": title,
        "collapsed": collapsed,
        "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
        "panels": panels or [],
    }
    return r


def datasource_variable():
    return {
        "type": "datasource",
        "name": "datasource",
        "label": "Data source",
        "description": "The Prometheus that scrapes labelqc (and evaluates grafana/prometheus/rules).",
        "query": "prometheus",
        "current": {"text": "Prometheus (labelqc)", "value": "labelqc-prometheus"},
        "hide": 0,
        "multi": False,
        "includeAll": False,
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
        "allowCustomValue": True,
        "auto": False,
        "auto_count": 30,
        "auto_min": "10s",
    }


def query_variable(name, label, query, description, *, include_all=True, multi=True, current=None):
    v = {
        "type": "query",
        "name": name,
        "label": label,
        "description": description,
        "datasource": DS,
        "query": query,
        "current": current or {"text": "All", "value": "$__all"},
        "hide": 0,
        "multi": multi,
        "includeAll": include_all,
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "skipUrlSync": False,
        "allowCustomValue": True,
        "auto": False,
        "auto_count": 30,
        "auto_min": "10s",
    }
    if include_all:
        v["allValue"] = ".*"
    return v


def project_variable():
    return query_variable(
        "project", "Project", "label_values(labelqc_scope_labels, project)",
        "labelqc projects (the project field of label events).")


def task_variable():
    return query_variable(
        "task", "Task", 'label_values(labelqc_scope_labels{project=~"$project"}, task)',
        "Tasks of the selected projects; agreement and gold accuracy are per (project, task).")


def window_variable():
    return query_variable(
        "window", "Window", "label_values(labelqc_scope_labels, window)",
        "The window of the scope numbers: all (all-time) by default.",
        include_all=False, multi=False, current={"text": "all", "value": "all"})


def builtin_annotation():
    return {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }


def prometheus_alerts_annotation():
    return {
        "builtIn": 0,
        "datasource": DS,
        "enable": True,
        "hide": False,
        "iconColor": "red",
        "name": "Prometheus alerts",
        "expr": 'ALERTS{alertname=~"Labelqc.*", alertstate="firing"}',
        "step": "1m",
        "titleFormat": "{{alertname}}",
        "textFormat": "{{project}} {{task}} {{instance}}",
        "tagKeys": "severity,category",
        "useValueForTime": False,
    }


def labelqc_alerts_annotation():
    return {
        "builtIn": 0,
        "datasource": DS,
        "enable": True,
        "hide": False,
        "iconColor": "orange",
        "name": "labelqc critical alerts raised",
        "expr": 'sum by (project) (increase(labelqc_alerts_total{project=~"$project", severity="critical"}[2m])) > 0',
        "step": "2m",
        "titleFormat": "labelqc raised critical alerts in {{project}}",
        "textFormat": "see the labelqc.alerts topic",
        "tagKeys": "project",
        "useValueForTime": False,
    }


def dashboard_links():
    return [{
        "asDropdown": False,
        "icon": "external link",
        "includeVars": False,
        "keepTime": True,
        "tags": ["labelqc"],
        "targetBlank": False,
        "title": "labelqc",
        "tooltip": "",
        "type": "dashboards",
        "url": "",
    }]


def dashboard(uid, title, description, panels, variables, annotations):
    # Panel ids: unique, in layout order (rows' nested panels included).
    next_id = 1
    for p in panels:
        p["id"] = next_id
        next_id += 1
        for q in p.get("panels", []):
            q["id"] = next_id
            next_id += 1
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["labelqc"],
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "liveNow": False,
        "refresh": "30s",
        "schemaVersion": 41,
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {
            "hidden": False,
            "refresh_intervals": ["5s", "10s", "30s", "1m", "5m", "15m", "30m", "1h", "2h", "1d"],
        },
        "timezone": "browser",
        "version": 1,
        "links": dashboard_links(),
        "annotations": {"list": [builtin_annotation()] + annotations},
        "templating": {"list": variables},
        "panels": panels,
    }


def annotator_link(annotator_field="${__data.fields.annotator}"):
    return {
        "title": "Open in the annotator drill-down",
        "url": f"/d/{ANNOTATOR_UID}/labelqc-annotator-drill-down?${{datasource:queryparam}}"
               f"&var-project=${{__data.fields.project}}&var-annotator={annotator_field}&${{__url_time_range}}",
        "targetBlank": False,
    }


# ---------------------------------------------------------------------------------------------
# Pipeline panels (the overview's collapsed row and the pipeline dashboard share them)

INSTANCE = 'instance=~"$instance"'


def events_panel(pos, selector=""):
    return timeseries(
        "Events per second",
        "Input events taken per second, by topic (labels, gold) and result: ok, deleted (a delete "
        "event) and invalid (refused: a dead letter). Flat at zero while labelqc is up means no "
        "input is arriving.",
        "ops", COUNT_STEPS,
        [target(f"sum by (topic, result) (instance_topic_result:labelqc_events:rate1m{{{selector}}})",
                "{{topic}} {{result}}")],
        pos, stack=True, minimum=0)


def dead_letters_panel(pos, selector=""):
    return timeseries(
        "Dead letters",
        "Refused input records per second by topic (left axis) and as a share of the topic's "
        "events (right axis), over 5 minutes. Each is on the labelqc.deadletter topic with its source position "
        "and reason. The alert LabelqcDeadLetterRate fires at 1% for 10 minutes.",
        "ops", steps("green", (0.01, "red")),
        [target(f"sum by (topic) (instance_topic:labelqc_dead_letters:rate5m{{{selector}}})",
                "{{topic}} per second"),
         target(f"max by (topic) (instance_topic:labelqc_dead_letters:ratio_rate5m{{{selector}}})",
                "{{topic}} share", ref="B")],
        pos, minimum=0,
        overrides=[{
            "matcher": {"id": "byRegexp", "options": ".* share"},
            "properties": [
                {"id": "unit", "value": "percentunit"},
                {"id": "custom.axisPlacement", "value": "right"},
                {"id": "custom.thresholdsStyle", "value": {"mode": "dashed"}},
            ],
        }])


def lag_panel(pos, selector=""):
    return timeseries(
        "Consumer lag",
        "Input messages not yet processed, by topic (labelqc run: high watermark minus position "
        "over the topic's partitions; labelqc demo: events given but not yet taken). A line that "
        "keeps rising means labelqc cannot keep up: LabelqcConsumerLagGrowing.",
        "short", steps("green", (10000, "orange"), (100000, "red")),
        [target(f"sum by (topic) (labelqc_consumer_lag_messages{{{selector}}})", "{{topic}}")],
        pos, minimum=0, lines="dashed")


def freshness_panel(pos, selector=""):
    return timeseries(
        "Output freshness",
        "Seconds since labelqc last brought its output up to date (updated), and since the event "
        "time of the newest label in it (newest label). Updated stays near the epoch interval "
        "while input flows; newest label also grows when annotators stop labelling. "
        "LabelqcOutputStale fires when the output is 5 minutes old while input waits.",
        "s", steps("green", (60, "orange"), (300, "red")),
        [target(f"time() - max(labelqc_output_updated_timestamp_seconds{{{selector}}})", "updated"),
         target(f"time() - max(labelqc_output_event_time_timestamp_seconds{{{selector}}})",
                "newest label", ref="B")],
        pos, minimum=0, lines="dashed")


def latency_panel(pos, selector=""):
    sel = f"{{{selector}}}" if selector else ""
    return timeseries(
        "Processing latency",
        "From an event's creation (labelqc run: its Kafka timestamp) to its effect in the "
        "delivered output: quantiles since the process started, and the mean over the last "
        "interval.",
        "s", steps("green", (1, "orange"), (10, "red")),
        [target(f"max by (quantile) (labelqc_processing_latency_seconds{sel})", "p{{quantile}}"),
         target(f"sum(rate(labelqc_processing_latency_seconds_sum{sel}[$__rate_interval]))"
                f" / sum(rate(labelqc_processing_latency_seconds_count{sel}[$__rate_interval]))",
                "mean", ref="B")],
        pos, minimum=0, lines="dashed")


def memory_panel(pos, selector=""):
    return timeseries(
        "Memory",
        "Resident memory of each labelqc process (state lives in memory: it grows with live "
        "labels, items and annotators).",
        "bytes", steps("green", (8 * 2**30, "orange"), (16 * 2**30, "red")),
        [target(f"labelqc_process_resident_memory_bytes{{{selector}}}", "{{instance}}")],
        pos, minimum=0)


# ---------------------------------------------------------------------------------------------
# Label quality overview


def overview():
    panels = []
    y = 0
    panels.append(row("Quality now", y))
    y += 1
    panels += [
        stat("Output age",
             "Seconds since labelqc last brought its numbers up to date. Every number on this "
             "dashboard is only as fresh as this: orange after a minute, red after five. "
             "'No data' means Prometheus has nothing from labelqc: is it up?",
             "s", steps("green", (60, "orange"), (300, "red")),
             [target("time() - max(labelqc_output_updated_timestamp_seconds)", "output age", instant=True)],
             (0, y, 3, 5), text_mode="value", no_value="labelqc down?", decimals=0),
        stat("Newest label",
             "Age of the newest label event (its event time) in the numbers: how current the "
             "workforce's work is. Grows overnight when nobody labels; red after an hour.",
             "s", steps("green", (900, "orange"), (3600, "red")),
             [target("time() - max(labelqc_output_event_time_timestamp_seconds)", "newest label", instant=True)],
             (3, y, 3, 5), text_mode="value", no_value="no data", decimals=0),
        stat("Krippendorff's alpha (nominal)",
             f"Agreement beyond chance per scope. Red under {ALPHA_TENTATIVE} (not even tentative "
             f"conclusions), orange under {ALPHA_RELIABLE}, green from {ALPHA_RELIABLE} "
             "(reliable; Krippendorff 2004).",
             "none", ALPHA_STEPS,
             [target(f'labelqc_scope_krippendorff_alpha{{{SCOPE}, level="nominal"}}',
                     "{{project}}/{{task}}", instant=True)],
             (6, y, 6, 5), decimals=3, minimum=-1, maximum=1),
        stat("Gold accuracy",
             f"Pooled accuracy on gold questions per scope. Red under the target {GOLD_TARGET:.0%}.",
             "percentunit", GOLD_STEPS,
             [target(f"labelqc_scope_gold_accuracy_ratio{{{SCOPE}}}", "{{project}}/{{task}}", instant=True)],
             (12, y, 5, 5), decimals=1, minimum=0, maximum=1),
        stat("Consensus rate",
             "Share of items with at least two labels on which one label has more than half of "
             "them: the items whose consensus label is clear. No chance correction: read it next "
             "to alpha.",
             "percentunit", steps("red", (0.7, "orange"), (0.8, "green")),
             [target(f"labelqc_scope_consensus_ratio{{{SCOPE}}}", "{{project}}/{{task}}", instant=True)],
             (17, y, 4, 5), decimals=1, minimum=0, maximum=1),
        stat("Alerts firing",
             "labelqc's own alerts firing now (labelqc.alerts topic), by severity: critical for a "
             "scope under its alpha or gold target, warning for an annotator's drift.",
             "short", steps("green", (1, "orange")),
             [target('sum by (severity) (labelqc_alerts_firing{project=~"$project"})', "{{severity}}", instant=True)],
             (21, y, 3, 5), text_mode="value_and_name",
             overrides=[{
                 "matcher": {"id": "byName", "options": "critical"},
                 "properties": [{"id": "thresholds", "value": steps("green", (1, "red"))}],
             }]),
    ]
    y += 5
    panels += [
        bar_gauge("Annotators per gate state",
                  "Annotators of the selected projects by gate: allow (route work), warmup (too few "
                  "gold answers to judge), probation (re-admitted, watched), block (stop routing "
                  "work). Red as soon as one is blocked.",
                  "short", COUNT_STEPS,
                  [target('sum by (state) (labelqc_annotators_gate{project=~"$project"})', "{{state}}", instant=True)],
                  (0, y, 6, 6), minimum=0,
                  overrides=[
                      {"matcher": {"id": "byName", "options": "block"},
                       "properties": [{"id": "thresholds", "value": steps("green", (1, "red"))}]},
                      {"matcher": {"id": "byName", "options": "probation"},
                       "properties": [{"id": "thresholds", "value": steps("green", (1, "orange"))}]},
                      {"matcher": {"id": "byName", "options": "warmup"},
                       "properties": [{"id": "thresholds", "value": steps("blue")}]},
                  ]),
        bar_gauge("Annotators in watch and alarm",
                  "Annotators whose drift signal is at watch (evidence at half the alarm level) or "
                  "alarm, per signal: gold, agreement, label_mix, speed, too_fast. An annotator "
                  "flagged on two signals counts on both bars.",
                  "short", steps("green", (1, "orange"), (5, "red")),
                  [target('sum by (signal, state) (labelqc_annotators_signal_state{project=~"$project", state=~"watch|alarm"})',
                          "{{signal}} {{state}}", instant=True)],
                  (6, y, 6, 6), minimum=0),
        bar_gauge("Annotators not judged yet (too little data)",
                  "Annotators whose drift signal lacks its minimum data (state insufficient), per "
                  "signal: they are neither ok nor flagged on it. speed and too_fast compare the "
                  "last 7 days with the 28 before, so they stay here for five weeks; gold needs "
                  "earlier gold answers to compare with. Blue: information, not a problem.",
                  "short", steps("blue"),
                  [target('sum by (signal) (labelqc_annotators_signal_state{project=~"$project", state="insufficient"})',
                          "{{signal}}", instant=True)],
                  (12, y, 6, 6), minimum=0),
        bar_gauge("Gold answers (evidence)",
                  "Labels on gold items per scope: the n behind the gold accuracy. Under 50 the "
                  "accuracy is too uncertain to alert on (red).",
                  "short", steps("red", (50, "green")),
                  [target(f"labelqc_scope_gold_answers{{{SCOPE}}}", "{{project}}/{{task}}", instant=True)],
                  (18, y, 6, 6), minimum=0),
    ]
    y += 6

    panels.append(row("Volume", y))
    y += 1
    panels += [
        timeseries("Live labels",
                   "Labels currently counted per scope (relabels replace, deletes remove).",
                   "short", COUNT_STEPS,
                   [target(f"labelqc_scope_labels{{{SCOPE}}}", "{{project}}/{{task}}")],
                   (0, y, 8, 7), minimum=0),
        timeseries("Items",
                   "Labelled items per scope.",
                   "short", COUNT_STEPS,
                   [target(f"labelqc_scope_items{{{SCOPE}}}", "{{project}}/{{task}}")],
                   (8, y, 8, 7), minimum=0),
        timeseries("Annotators",
                   "Annotators with at least one live label per scope.",
                   "short", COUNT_STEPS,
                   [target(f"labelqc_scope_annotators{{{SCOPE}}}", "{{project}}/{{task}}")],
                   (16, y, 8, 7), minimum=0),
    ]
    y += 7

    panels.append(row("Agreement", y))
    y += 1
    panels += [
        timeseries("Krippendorff's alpha",
                   f"Nominal alpha per scope, with the target lines {ALPHA_TENTATIVE} (tentative) "
                   f"and {ALPHA_RELIABLE} (reliable). LabelqcScopeAlphaBelowTarget fires under "
                   f"{ALPHA_TENTATIVE} for 30 minutes.",
                   "none", ALPHA_STEPS,
                   [target(f'labelqc_scope_krippendorff_alpha{{{SCOPE}, level="nominal"}}', "{{project}}/{{task}}")],
                   (0, y, 12, 8), lines="dashed", maximum=1, decimals=3),
        timeseries("Chance-corrected agreement",
                   "Fleiss' kappa, Gwet's AC1 and the mean pairwise Cohen's kappa per scope. AC1 "
                   "stays stable when one category dominates; the lines are the alpha targets.",
                   "none", ALPHA_STEPS,
                   [target(f"labelqc_scope_fleiss_kappa{{{SCOPE}}}", "{{project}}/{{task}} Fleiss"),
                    target(f"labelqc_scope_gwet_ac1{{{SCOPE}}}", "{{project}}/{{task}} AC1", ref="B"),
                    target(f"labelqc_scope_mean_cohen_kappa{{{SCOPE}}}", "{{project}}/{{task}} Cohen", ref="C")],
                   (12, y, 12, 8), lines="dashed", maximum=1, decimals=3),
    ]
    y += 8
    panels.append(
        timeseries("Consensus rate",
                   "Share of items with at least two labels on which one label has more than half "
                   "of them, per scope.",
                   "percentunit", steps("red", (0.7, "orange"), (0.8, "green")),
                   [target(f"labelqc_scope_consensus_ratio{{{SCOPE}}}", "{{project}}/{{task}}")],
                   (0, y, 24, 6), lines="dashed", minimum=0, maximum=1))
    y += 6

    panels.append(row("Gold accuracy", y))
    y += 1
    panels.append(
        timeseries("Gold accuracy",
                   f"Pooled gold accuracy per scope with the target line {GOLD_TARGET:.0%}. "
                   "LabelqcScopeGoldAccuracyBelowTarget fires under it for 30 minutes once a scope "
                   "has 50 gold answers.",
                   "percentunit", GOLD_STEPS,
                   [target(f"labelqc_scope_gold_accuracy_ratio{{{SCOPE}}}", "{{project}}/{{task}}")],
                   (0, y, 24, 8), lines="dashed", maximum=1, decimals=3))
    y += 8

    panels.append(row("Annotators and gates", y))
    y += 1
    panels += [
        timeseries("Annotators per gate state",
                   "Annotators of the selected projects per gate state over time (stacked).",
                   "short", COUNT_STEPS,
                   [target('sum by (state) (labelqc_annotators_gate{project=~"$project"})', "{{state}}")],
                   (0, y, 8, 8), stack=True, minimum=0,
                   overrides=[colour_override(s, c) for s, c in GATE_COLOURS.items()]),
        timeseries("Gate changes in the last hour",
                   "Gate decisions in the hour before each point, by change (from -> to; 'none' is "
                   "an annotator's first decision). Each is a record on labelqc.gating with its "
                   "reason. Red: more than five of a kind an hour.",
                   "short", steps("green", (5, "red")),
                   [target('sum by (from, to) (project_from_to:labelqc_gate_transitions:increase1h{project=~"$project"})',
                           "{{from}} -> {{to}}")],
                   (8, y, 8, 8), minimum=0),
        timeseries("Blocked and on probation",
                   "Share of each project's annotators whose gate is block or probation. Orange "
                   "from 5%, red from 10%: many blocked at once points at the gold answers or the "
                   "task rather than the people.",
                   "percentunit", steps("green", (0.05, "orange"), (0.1, "red")),
                   [target('project_state:labelqc_annotators_gate:ratio{project=~"$project", state=~"block|probation"}',
                           "{{project}} {{state}}")],
                   (16, y, 8, 8), minimum=0, lines="dashed"),
        timeseries("Annotators in alarm per signal",
                   "Annotators at alarm per drift signal. Many at once on one signal points at the "
                   "data or the task (labelqc then raises one population_shift alert).",
                   "short", steps("green", (1, "orange"), (5, "red")),
                   [target('sum by (signal) (labelqc_annotators_signal_state{project=~"$project", state="alarm"})',
                           "{{signal}}")],
                   (0, y + 8, 24, 7), minimum=0),
    ]
    y += 15

    panels.append(row("Leaderboard (pairwise preferences)", y))
    y += 1
    system = 'project=~"$project", task=~"$task"'
    panels += [
        bar_gauge("Leaderboard: Elo per system",
                  "Each system's Elo rating on its scope's leaderboard (labelqc.leaderboard), from "
                  "the Bradley-Terry strengths over the comparisons of annotators whose gate does "
                  "not block them: 1000 + 400 strength / ln 10. 400 points are odds of 10 to 1.",
                  "none", steps("blue"),
                  [target(f"max by (project, task, system) (labelqc_system_elo{{{system}}})",
                          "{{system}} ({{project}}/{{task}})", instant=True)],
                  (0, y, 8, 9), decimals=0),
        timeseries("Bradley-Terry strength with its 95% interval",
                   "Each system's strength (log-odds; 0 is the average system) and the ends of its "
                   "95% interval. Two systems whose intervals overlap much are not told apart yet: "
                   "more comparisons narrow them.",
                   "none", steps("blue"),
                   [target(f"labelqc_system_strength{{{system}}}", "{{system}}"),
                    target(f"labelqc_system_strength_low{{{system}}}", "{{system}} low", ref="B"),
                    target(f"labelqc_system_strength_high{{{system}}}", "{{system}} high", ref="C")],
                   (8, y, 16, 9), decimals=3),
    ]
    y += 9

    panels.append(row("Who needs attention", y))
    y += 1
    panels.append(
        table("Watchlist: the most flagged annotators",
              "Per project, the annotators with the strongest drift evidence (labelqc's watchlist: "
              "the top drift.watchlist_size per project and signal, 10 by default). Worst score is "
              "the signal's evidence over its alarm level: 1 is alarm, 0.5 watch. Gold accuracy is "
              "the gate's recent gold accuracy. Click an annotator for the drill-down; the full "
              "record is on the labelqc.annotators topic.",
              "none", steps("green", (0.5, "orange"), (1, "red")),
              [target('max by (project, annotator) (labelqc_watchlist_score{project=~"$project"})',
                      "worst score", instant=True, table=True),
               target('count by (project, annotator) (labelqc_watchlist_score{project=~"$project"} >= 0.5)',
                      "signals", ref="B", instant=True, table=True),
               target('max by (project, annotator) (labelqc_watchlist_gold_accuracy_ratio{project=~"$project"})',
                      "gold accuracy", ref="C", instant=True, table=True)],
              (0, y, 24, 10), decimals=2,
              transformations=[
                  # One row per (project, annotator), a column per query.
                  {"id": "merge", "options": {}},
                  {"id": "organize", "options": {
                      "excludeByName": {"Time": True},
                      "indexByName": {"project": 0, "annotator": 1, "Value #A": 2, "Value #B": 3, "Value #C": 4},
                      "renameByName": {"Value #A": "worst score", "Value #B": "signals at watch or alarm",
                                       "Value #C": "gold accuracy"},
                  }},
              ],
              overrides=[
                  {"matcher": {"id": "byName", "options": "annotator"},
                   "properties": [{"id": "links", "value": [annotator_link("${__value.raw}")]}]},
                  {"matcher": {"id": "byName", "options": "gold accuracy"},
                   "properties": [{"id": "unit", "value": "percentunit"},
                                  {"id": "thresholds", "value": steps("red", (GATE_THRESHOLD, "green"))}]},
                  {"matcher": {"id": "byName", "options": "signals at watch or alarm"},
                   "properties": [{"id": "unit", "value": "short"}, {"id": "decimals", "value": 0},
                                  {"id": "thresholds", "value": steps("green", (1, "orange"), (2, "red"))}]},
              ]))
    y += 10

    pipeline_selector = ""
    panels.append(row("Pipeline health", y, collapsed=True, panels=[
        events_panel((0, y + 1, 8, 7), pipeline_selector),
        dead_letters_panel((8, y + 1, 8, 7), pipeline_selector),
        lag_panel((16, y + 1, 8, 7), pipeline_selector),
        freshness_panel((0, y + 8, 8, 7), pipeline_selector),
        latency_panel((8, y + 8, 8, 7), pipeline_selector),
        memory_panel((16, y + 8, 8, 7), pipeline_selector),
    ]))

    return dashboard(
        OVERVIEW_UID, "labelqc: label quality overview",
        "Label quality now and over time: agreement and gold accuracy per scope against their "
        "targets, annotators per gate and drift state, who needs attention, and the pipeline "
        "behind the numbers.",
        panels,
        [datasource_variable(), project_variable(), task_variable(), window_variable()],
        [prometheus_alerts_annotation(), labelqc_alerts_annotation()])


# ---------------------------------------------------------------------------------------------
# Annotator drill-down

WATCHED = 'project=~"$project", annotator=~"$annotator"'


def annotator_drilldown():
    panels = []
    y = 0
    panels.append(row("Watchlist of the project", y))
    y += 1
    panels += [
        stat("Annotators on the watchlist",
             "Distinct annotators on the watchlist of the selected projects: those whose drift "
             "evidence reaches watch on some signal, at most drift.watchlist_size (10 by default) "
             "per project and signal. Prometheus never holds a series per annotator beyond these.",
             "short", steps("green", (1, "orange"), (10, "red")),
             [target('count(count by (project, annotator) (labelqc_watchlist_score{project=~"$project"}))',
                     "on the watchlist", instant=True)],
             (0, y, 4, 8), text_mode="value", no_value="0", decimals=0),
        table("Watchlist by signal",
              "Every watchlist entry: score is the signal's evidence over its alarm level (1 "
              "alarm, 0.5 watch). Click an annotator to show them below.",
              "none", steps("green", (0.5, "orange"), (1, "red")),
              [target('labelqc_watchlist_score{project=~"$project"}', "score", instant=True, table=True)],
              (4, y, 20, 8), decimals=2,
              transformations=[
                  {"id": "organize", "options": {
                      "excludeByName": {"Time": True, "__name__": True, "instance": True, "job": True},
                      "indexByName": {"project": 0, "annotator": 1, "signal": 2, "Value": 3},
                      "renameByName": {"Value": "worst score"},
                  }},
              ],
              overrides=[
                  {"matcher": {"id": "byName", "options": "annotator"},
                   "properties": [{"id": "links", "value": [annotator_link("${__value.raw}")]}]},
              ]),
    ]
    y += 8

    panels.append(row("Annotator: $annotator", y))
    y += 1
    panels += [
        timeseries("Drift scores",
                   "Each signal's evidence over its alarm level for the selected annotator: the "
                   "dashed lines are watch (0.5) and alarm (1). A gap means the annotator was not "
                   "among the top K of that signal then, i.e. below the others on the watchlist.",
                   "none", steps("green", (0.5, "orange"), (1, "red")),
                   [target(f"labelqc_watchlist_score{{{WATCHED}}}", "{{annotator}} {{signal}}")],
                   (0, y, 12, 9), lines="dashed", minimum=0, decimals=2),
        timeseries("Recent gold accuracy",
                   f"The gate's evidence: the annotator's gold accuracy over their recent gold "
                   f"answers. Blocked when even the upper end of its 95% interval is under "
                   f"{GATE_THRESHOLD:.0%} (the dashed line).",
                   "percentunit", steps("red", (GATE_THRESHOLD, "green")),
                   [target(f"labelqc_watchlist_gold_accuracy_ratio{{{WATCHED}}}", "{{annotator}}")],
                   (12, y, 12, 9), lines="dashed", minimum=0, maximum=1),
    ]
    y += 9
    panels += [
        timeseries("Scope gold accuracy, for comparison",
                   f"Pooled gold accuracy of the project's scopes, all annotators together: is the "
                   f"annotator worse than everyone, or is the task hard? Target {GOLD_TARGET:.0%}.",
                   "percentunit", GOLD_STEPS,
                   [target('labelqc_scope_gold_accuracy_ratio{project=~"$project", window="all"}',
                           "{{project}}/{{task}}")],
                   (0, y, 12, 8), lines="dashed", minimum=0, maximum=1),
        timeseries("Project: annotators per signal state",
                   "How many of the project's annotators are at watch or alarm per signal, for "
                   "context: one of many, or the only one?",
                   "short", steps("green", (1, "orange"), (5, "red")),
                   [target('sum by (signal, state) (labelqc_annotators_signal_state{project=~"$project", state=~"watch|alarm"})',
                           "{{signal}} {{state}}")],
                   (12, y, 12, 8), minimum=0),
    ]

    annotator = query_variable(
        "annotator", "Annotator", 'label_values(labelqc_watchlist_score{project=~"$project"}, annotator)',
        "Annotators on the watchlist of the selected projects (the only annotator ids in Prometheus).",
        multi=False)
    return dashboard(
        ANNOTATOR_UID, "labelqc: annotator drill-down",
        "The annotators on labelqc's bounded watchlist (the most flagged per project and signal): "
        "their drift scores and recent gold accuracy against the project's. Decisions and full "
        "records are on the labelqc.gating and labelqc.annotators topics.",
        panels,
        [datasource_variable(), project_variable(), annotator],
        [prometheus_alerts_annotation(), labelqc_alerts_annotation()])


# ---------------------------------------------------------------------------------------------
# Pipeline health


def pipeline():
    panels = []
    y = 0
    panels.append(row("Now", y))
    y += 1
    panels += [
        stat("Up",
             "Whether Prometheus could scrape each labelqc process (1) or not (0). A scrape over "
             "the sample limit also fails: see Series per scrape.",
             "none", steps("red", (1, "green")),
             [target(f'up{{job="labelqc", {INSTANCE}}}', "{{instance}}", instant=True)],
             (0, y, 4, 5), text_mode="value_and_name", no_value="no target", decimals=0,
             minimum=0, maximum=1),
        stat("Output age",
             "Seconds since the output was last brought up to date.",
             "s", steps("green", (60, "orange"), (300, "red")),
             [target(f"time() - max(labelqc_output_updated_timestamp_seconds{{{INSTANCE}}})", "output age", instant=True)],
             (4, y, 4, 5), text_mode="value", decimals=0),
        stat("Consumer lag",
             "Input messages not yet processed, all topics.",
             "short", steps("green", (10000, "orange"), (100000, "red")),
             [target(f"sum(labelqc_consumer_lag_messages{{{INSTANCE}}})", "lag", instant=True)],
             (8, y, 4, 5), text_mode="value"),
        stat("Events per second",
             "Input events taken per second, all topics and results.",
             "ops", COUNT_STEPS,
             [target(f"sum(instance_topic_result:labelqc_events:rate1m{{{INSTANCE}}})", "events/s", instant=True)],
             (12, y, 4, 5), text_mode="value"),
        stat("Dead letters per second",
             "Refused input records per second over 5 minutes, all topics.",
             "ops", steps("green", (0.001, "orange")),
             [target(f"sum(instance_topic:labelqc_dead_letters:rate5m{{{INSTANCE}}})", "dead letters/s", instant=True)],
             (16, y, 4, 5), text_mode="value"),
        stat("p99 latency",
             "99th percentile of the processing latency since start.",
             "s", steps("green", (1, "orange"), (10, "red")),
             [target(f'max(labelqc_processing_latency_seconds{{quantile="0.99", {INSTANCE}}})', "p99", instant=True)],
             (20, y, 4, 5), text_mode="value"),
    ]
    y += 5

    panels.append(row("Input", y))
    y += 1
    panels += [
        events_panel((0, y, 8, 8), INSTANCE),
        dead_letters_panel((8, y, 8, 8), INSTANCE),
        lag_panel((16, y, 8, 8), INSTANCE),
    ]
    y += 8

    panels.append(row("Processing", y))
    y += 1
    panels += [
        timeseries("Epochs per second",
                   "Epochs whose output is complete, per second (labelqc run: at most one per "
                   "kafka.epoch_interval_ms while input flows; labelqc demo: ten a second).",
                   "ops", COUNT_STEPS,
                   [target(f"sum by (instance) (rate(labelqc_epochs_completed_total{{{INSTANCE}}}[$__rate_interval]))",
                           "{{instance}}")],
                   (0, y, 12, 8), minimum=0),
        latency_panel((12, y, 12, 8), INSTANCE),
    ]
    y += 8

    panels.append(row("Output", y))
    y += 1
    panels.append(freshness_panel((0, y, 24, 8), INSTANCE))
    y += 8

    panels.append(row("Resources", y))
    y += 1
    panels += [
        memory_panel((0, y, 8, 8), INSTANCE),
        timeseries("CPU",
                   "CPU time used per second of wall time (1 is one core busy).",
                   "none", steps("green", (1.5, "orange")),
                   [target(f"rate(labelqc_process_cpu_seconds_total{{{INSTANCE}}}[$__rate_interval])", "{{instance}}")],
                   (8, y, 8, 8), minimum=0, decimals=2),
        timeseries("Series per scrape",
                   "Samples in each scrape of labelqc's /metrics. They grow with scopes and "
                   "projects, never with annotators or items (docs/metrics.md has the formula); the "
                   f"scrape config's sample_limit ({SAMPLE_LIMIT:,}) fails a scrape above it, and Up "
                   "drops to 0. Orange from 75% of it: raise the limit before adding scopes.",
                   "short", steps("green", (SAMPLE_LIMIT * 3 // 4, "orange"), (SAMPLE_LIMIT, "red")),
                   [target(f'scrape_samples_scraped{{job="labelqc", {INSTANCE}}}', "{{instance}}")],
                   (16, y, 8, 8), lines="dashed", minimum=0),
    ]

    instance = query_variable(
        "instance", "Instance", 'label_values(up{job="labelqc"}, instance)',
        "labelqc processes scraped by the job labelqc.")
    return dashboard(
        PIPELINE_UID, "labelqc: pipeline health",
        "The pipeline behind the quality numbers, in the order data flows: input (events, dead "
        "letters, consumer lag), processing (epochs, latency), output (freshness), resources.",
        panels,
        [datasource_variable(), instance],
        [prometheus_alerts_annotation()])


DASHBOARDS = {
    "labelqc-overview.json": overview,
    "labelqc-annotator.json": annotator_drilldown,
    "labelqc-pipeline.json": pipeline,
}


def render(build):
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="fail if a committed dashboard differs from the generated one")
    args = parser.parse_args()
    stale = []
    for name, build in DASHBOARDS.items():
        path = OUT / name
        text = render(build)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print("out of date (run grafana/tools/generate.py and commit): " + ", ".join(stale), file=sys.stderr)
        return 1
    if args.check:
        print(f"{len(DASHBOARDS)} dashboards match grafana/tools/generate.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
