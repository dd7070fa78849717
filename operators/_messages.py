"""The sentences the review operators and the Concept Rules panel end with: what was written where, how many."""


def accepted_sentence(out: dict) -> str:
    n = len(out["accepted"])
    return (f"Accepted {n} sample{'s' * (n != 1)}: {'its' if n == 1 else 'their'} prediction is now ground truth in "
            f"{out['mask_field']!r} as {out['class']!r}" + _replaced(out) + f" ({out['total_accepted']} accepted in all).")


def _replaced(out: dict) -> str:
    n = len(out.get("replaced") or [])
    return f", in place of the class's earlier ground truth on {n} sample{'s' * (n != 1)}" if n else ""


def rejected_sentence(out: dict) -> str:
    n = len(out["rejected"])
    absent = f"; {len(out['negatives'])} join the demonstrations as negatives" if out["negatives"] else ""
    return f"Rejected {n} prediction{'s' * (n != 1)} (tagged conceptseg_rejected){absent}."


def promoted_sentence(out: dict) -> str:
    n, missing = len(out["promoted"]), len(out["missing"])
    return (f"Promoted {n} corrected mask{'s' * (n != 1)} into {out['mask_field']!r} as {out['class']!r}"
            + (f"; {missing} skipped: " + "; ".join(f"{i} {w}" for i, w in out["missing"].items()) if missing else "")
            + ".")


def rerun_sentence(out: dict) -> str:
    v = out["verification"]
    return (f"Round {out['round']}: {out['segmented']} targets segmented again into {out['pred_field']!r} with "
            f"{out['demonstrations']} demonstrations ({out['route']} route, verification "
            f"{'unavailable' if v is None else f'{v:.3f}'}).")


def annotation_sent_sentence(out: dict) -> str:
    n = len(out["ids"])
    return (f"Sent the {n} most doubtful target{'s' * (n != 1)} to Label Studio, pre-annotated with "
            f"{'its' if n == 1 else 'their'} prediction as {out['class']!r}: correct them at {out['url']}, then "
            "bring them home with this operator's second step.")


def corrections_loaded_sentence(out: dict) -> str:
    n, skipped = len(out["promoted"]), len(out["skipped"])
    return (f"Loaded {n} corrected mask{'s' * (n != 1)} from Label Studio into {out['mask_field']!r} as "
            f"{out['class']!r}" + _replaced(out)
            + (f"; {skipped} not promoted: " + "; ".join(f"{i} {w}" for i, w in out["skipped"].items())
               if skipped else "")
            + ("; the Label Studio project was deleted" if out.get("cleaned") else "") + ".")
