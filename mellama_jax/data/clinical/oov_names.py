"""Notes whose surnames are in no lexicon: the recall test for context-based name rules.

A scrubber that finds "Mr. Smith" because "smith" is in a name list has learned nothing about
"Patient Mary Qorvath was seen": a real surname is in no list often enough (immigrant, hyphenated,
rare and misspelt names). Surnames here are built from syllables and kept only when they are in
neither philter-lite's first/last-name lists nor its not-a-name vocabulary, so only context can
find them. Sentences put them after patient, family and staff context words (and in the forms
that were already caught, as a control); clinical sentences whose capitalised words follow the
same context words ("Patient Active Problem List", "Family History: Diabetes Mellitus") record
spans that must survive.

`generate_oov_notes(n, seed)` returns SyntheticNote objects (phi = the planted surnames and
first names, keep = the clinical spans), scored with synthetic.evaluate_scrubber; recall of the
type "SURNAME" is the number the issue asks for.
"""
from __future__ import annotations

import random
import re
from typing import Iterator

from mellama_jax.data.clinical.synthetic import SyntheticNote

_ONSETS = "B Br C Ch D Dr F G Gr H J K Kr L M N P Pr Q R S Sk St T Tr V W Y Z Zh Th".split()
_VOWELS = "a e i o u ai ei ou ia ae y".split()
_CODAS = "b d g k l m n r s t v x z ch sk rn lt nd rk st th ck ff ll nn ss tz".split()
_ENDINGS = "ov ek ath ell ani wicz ak enko oru ez aro une ix ard ski idis opoulos quist berg".split()

# First names: common ones (in the lexicon: they seed the name rule) and a few invented ones.
_FIRST = ("Mary James Linda Robert Susan Omar Priya Wei Elena Kwame Aisha Lars Ingrid Tomas Yusuf "
          "Mei Carlos Ana Olga Ravi").split()

# (template, planted kinds). {S} surname, {F} first name, {drug}/{dose} clinical keep spans.
_TEMPLATES = [
    "Patient {F} {S} was seen in clinic today for follow-up of {drug} {dose}.",
    "The patient, {S}, denies chest pain or shortness of breath.",
    "Patient {S} reports improved appetite on {drug}.",
    "Pt {F} {S} tolerated the procedure well.",
    "patient {S} was counselled about {drug} {dose}.",
    "Discussed the plan with the patient, {F} {S}, and her daughter.",
    "His wife, {F} {S}, was at the bedside.",
    "Daughter {S} called to ask about {drug}.",
    "The patient's son {F} {S} is the health care proxy.",
    "Family: brother {F} {S} (phone on file).",
    "Her husband {S} will drive her home.",
    "Nurse {S} administered {drug} {dose} at the bedside.",
    "Discussed with attending {S}; continue {drug}.",
    "Seen with Dr. {F} {S} from cardiology.",
    "Case reviewed with resident {F} {S}.",
    "Mr. {S} is resting comfortably.",
    "Mrs. {S} was given {drug} {dose}.",
    "{F} {S} is a 67 year old woman with CHF.",
    "Social work (Ms. {S}) met with the family.",
]
# Written after the rules above were, and never tuned on: the first-contact estimate.
_HELD_OUT_TEMPLATES = [
    "Pt. {F} {S} presents with worsening dyspnea; started {drug}.",
    "Per patient {S}, the pain began two days ago.",
    "Patient: {F} {S}",
    "The pt, {F} {S}, was ambulating in the hall.",
    "Her sister {F} {S} brought her medication list ({drug} {dose}).",
    "Mother ({S}) at bedside and updated.",
    "His partner, {S}, asked about discharge.",
    "Spoke with nurse {F} {S} regarding the {drug} drip.",
    "Dr. {S} from nephrology agreed with {drug} {dose}.",
    "Interpreter {F} {S} present for the visit.",
    "Attending: {F} {S}, MD",
    "{S}, {F} was seen again this morning.",
]
_CLINICAL = [
    ("Patient Active Problem List: {keep}.", "Hypertension, Diabetes Mellitus"),
    ("Patient Instructions: take {keep} daily.", "Lasix 40 mg"),
    ("Family History: {keep} in mother.", "Breast Cancer"),
    ("Patient Education provided on {keep}.", "Warfarin Safety"),
    ("Nurse Practitioner note: {keep} stable.", "Atrial Fibrillation"),
    ("Patient Controlled Analgesia with {keep}.", "Dilaudid"),
    ("Family Medicine follow-up for {keep}.", "Hyperlipidemia"),
    ("The patient, {keep} positive, was isolated.", "MRSA"),
    ("Patient Care Plan: continue {keep}.", "Heparin Drip"),
]
_DRUGS = "metoprolol lisinopril Lasix Coumadin heparin Keppra vancomycin Plavix Lipitor insulin".split()
_DOSES = "25 mg|40 mg|5 mg daily|10 units|500 mg BID".split("|")


def _lexicon_words() -> set[str]:
    from mellama_jax.data.clinical.names import load_name_lexicon

    lex = load_name_lexicon()
    if lex is None:
        return set()
    return set(lex.first) | set(lex.last) | set(lex.not_names)


def oov_surnames(n: int, seed: int = 0) -> list[str]:
    """`n` distinct invented surnames that no bundled lexicon contains."""
    rng = random.Random(seed)
    known = _lexicon_words()
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        parts = [rng.choice(_ONSETS), rng.choice(_VOWELS), rng.choice(_CODAS)]
        if rng.random() < 0.6:
            parts.append(rng.choice(_ENDINGS))
        name = "".join(parts)
        name = name[0].upper() + name[1:].lower()
        if rng.random() < 0.08:  # a few double-barrelled surnames
            other = rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
            name = f"{name}-{other[0].upper()}{other[1:].lower()}"
        low = name.lower()
        if low in seen or any(p in known for p in re.split(r"-", low)) or len(low) < 4:
            continue
        seen.add(low)
        out.append(name)
    return out


def generate_oov_notes(n: int, seed: int = 0, sentences: int = 6, held_out: bool = False) -> Iterator[SyntheticNote]:
    """Notes of `sentences` sentences each, names after context words, clinical spans kept.
    `held_out`: the templates written after the rules (never tuned on)."""
    templates = _HELD_OUT_TEMPLATES if held_out else _TEMPLATES
    rng = random.Random(seed)
    pool = oov_surnames(max(200, n), seed=seed + 1)
    for i in range(n):
        parts: list[str] = []
        pos = 0
        phi: list[tuple[int, int, str]] = []
        keep: list[tuple[int, int, str]] = []

        def add(s: str, kind: str | None = None, keep_kind: str | None = None) -> None:
            nonlocal pos
            if kind:
                phi.append((pos, pos + len(s), kind))
            if keep_kind:
                keep.append((pos, pos + len(s), keep_kind))
            parts.append(s)
            pos += len(s)

        for j in range(sentences):
            if rng.random() < 0.25:
                tpl, term = rng.choice(_CLINICAL)
                a, b = tpl.split("{keep}")
                add(a), add(term, keep_kind="clinical_term"), add(b)
            else:
                tpl = rng.choice(templates)
                last = 0
                for m in re.finditer(r"\{(\w+)\}", tpl):
                    add(tpl[last:m.start()])
                    slot = m.group(1)
                    if slot == "S":
                        add(rng.choice(pool), "SURNAME")
                    elif slot == "F":
                        add(rng.choice(_FIRST), "FIRSTNAME")
                    elif slot == "drug":
                        add(rng.choice(_DRUGS), keep_kind="drug")
                    else:
                        add(rng.choice(_DOSES), keep_kind="dose")
                    last = m.end()
                add(tpl[last:])
            add("\n" if rng.random() < 0.3 else " ")
        yield SyntheticNote(id=f"oov-{seed}-{i}", text="".join(parts), phi=phi, keep=keep,
                            family="oov_names_held_out" if held_out else "oov_names")
