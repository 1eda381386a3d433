"""Rule-based PHI detection and scrubbing for clinical notes (HIPAA Safe Harbor categories).

Detection is a set of regular expressions (dates, phones, emails, URLs, ids, addresses, ZIPs,
ages over 89, hospitals, city names before a state) plus name rules: titles ("Dr. X"), field
labels ("Patient: X"), credentials ("X, MD"), relatives ("his daughter X"), signature lines, a
first/last-name lexicon with an ordinary-word exclusion list (see names.py) and optional
user-supplied names. Overlapping candidates are resolved by rule priority, then length.
Rules over-scrub rather than under-scrub where the two conflict: a missed phone number is a
privacy incident, an extra `[ID]` costs the model little.
"""
from __future__ import annotations

import bisect
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import mellama_jax.data.clinical.names as names_mod
from mellama_jax.data.clinical.mimic import normalize_mimic as _normalize_mimic
from mellama_jax.data.clinical.types import PLACEHOLDER_RE, placeholder
from mellama_jax.data.text_hygiene import strip_control_chars

SCRUBBER_VERSION = "3"  # 2: patient-context and first-name-context surname rules; 3: control characters removed first


@dataclass(frozen=True)
class Span:
    """A detected PHI span [start, end) of `text`, with its type and the rule that found it."""

    start: int
    end: int
    type: str
    rule: str
    priority: int = 0


@dataclass(frozen=True)
class ScrubConfig:
    """Scrubber settings; recorded in PREPARED.json so a corpus says how it was scrubbed."""

    use_name_lexicon: bool = True
    extra_names: frozenset[str] = field(default_factory=frozenset)  # lower-cased name tokens
    normalize_mimic: bool = True

    def to_dict(self) -> dict:
        lex = names_mod.load_name_lexicon() if self.use_name_lexicon else None
        return {
            "scrubber_version": SCRUBBER_VERSION,
            "use_name_lexicon": self.use_name_lexicon,
            "name_lexicon": lex.source if lex else "none",
            "extra_names": len(self.extra_names),
            "normalize_mimic": self.normalize_mimic,
        }


# --------------------------------------------------------------------------- building blocks
def _title_and_upper(words: Iterable[str]) -> str:
    forms: list[str] = []
    for w in words:
        forms += [w, w.upper()]
    return "|".join(sorted(set(forms), key=len, reverse=True))


_MONTHS = (
    "January February March April May June July August September October November December "
    "Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec"
).split()
MON = rf"(?:{_title_and_upper(_MONTHS)})\.?"
ORD = r"(?:st|nd|rd|th)?"
YEAR4 = r"(?:1[89]\d\d|2[01]\d\d)"

_STATE_ABBR = (
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ "
    "NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY PR"
).split()
_STATE_FULL = [
    "Alabama", "Alaska", "Arizona", "Arkansas", "California", "Colorado", "Connecticut",
    "Delaware", "Florida", "Georgia", "Hawaii", "Idaho", "Illinois", "Indiana", "Iowa", "Kansas",
    "Kentucky", "Louisiana", "Maine", "Maryland", "Massachusetts", "Michigan", "Minnesota",
    "Mississippi", "Missouri", "Montana", "Nebraska", "Nevada", "New Hampshire", "New Jersey",
    "New Mexico", "New York", "North Carolina", "North Dakota", "Ohio", "Oklahoma", "Oregon",
    "Pennsylvania", "Rhode Island", "South Carolina", "South Dakota", "Tennessee", "Texas", "Utah",
    "Vermont", "Virginia", "Washington", "West Virginia", "Wisconsin", "Wyoming", "Puerto Rico",
]
_STATE_FULL_SET = frozenset(_STATE_FULL)
STATE = rf"(?:{'|'.join(sorted(_STATE_FULL, key=len, reverse=True))}|{'|'.join(_STATE_ABBR)})"
ZIPNUM = r"\d{5}(?:-\d{4})?"

# A capitalised name-like token: Smith, O'Brien, McDonald, Smith-Jones, D'Angelo.
_UP = "A-ZÀ-ÖØ-Þ"
_LO = "a-zß-öø-ÿ"
CAP = rf"(?:[{_UP}]'|Mc|Mac)?[{_UP}][{_LO}]+(?:-[{_UP}][{_LO}]+)*"
ALLCAP = rf"[{_UP}][{_UP}'\-]*[{_UP}]"
INITIAL = r"[A-Z]\."
PARTICLE = r"(?:van|von|de|del|der|da|di|la|le|du|bin|al|ben|dos|das)"
# An initial without a period counts only between two name words ("Owen M Gallagher").
NAME_SEQ = rf"(?:{CAP}|{INITIAL})(?:[ \t]+(?:{PARTICLE}[ \t]+)*(?:{CAP}|{INITIAL}|[A-Z](?=[ \t]+{CAP})))*"
NAME_VAL = (
    rf"(?:{ALLCAP}[ \t]*,[ \t]*{ALLCAP}(?:[ \t]+[A-Z]\.?)?"  # SMITH, JOHN A
    rf"|{CAP}[ \t]*,[ \t]*{CAP}(?:[ \t]+{INITIAL})?"  # Smith, John A.
    rf"|{NAME_SEQ}|{ALLCAP}(?:[ \t]+{ALLCAP}){{0,2}})"
)

_CREDENTIALS = (
    r"(?:M\.D\.|MD|D\.O\.|DO|RN|BSN|NP|FNP|APRN|PA-C|PA|PhD|MSW|LICSW|LCSW|CNM|CRNA|PharmD|"
    r"DPM|DDS|LPN|MBBS|MPH|DNP)"
)
_LABELS = (
    r"(?i:patient(?:'s)?(?:[ \t]+(?:full[ \t]+)?name)?|pt(?:[ \t]+name)?|name|full[ \t]+name|"
    r"attending(?:[ \t]+(?:physician|md|surgeon))?|resident|fellow|intern|pcp|"
    r"primary[ \t]+care(?:[ \t]+(?:physician|provider|doctor))?|"
    r"referring(?:[ \t]+(?:physician|provider|md|doctor))?|provider|surgeon|physician|doctor|"
    r"dictated[ \t]+by|signed[ \t]+by|electronically[ \t]+signed(?:[ \t]+by)?|co-?signed[ \t]+by|"
    r"reviewed[ \t]+by|transcribed[ \t]+by|author|performed[ \t]+by|ordered[ \t]+by|"
    r"interpreter|emergency[ \t]+contact|contact(?:[ \t]+person)?|next[ \t]+of[ \t]+kin|nok|hcp|"
    r"health[ \t]+care[ \t]+proxy|healthcare[ \t]+proxy|guardian|cc|nurse|case[ \t]+manager|"
    r"social[ \t]+worker|therapist|mother|father|spouse|emergency[ \t]+contact[ \t]+name|"
    r"caregiver|sign(?:ed|ature)|by|from|to|attn)"
)
_RELATIVES = (
    r"(?i:wife|husband|daughter|son|mother|father|sister|brother|niece|nephew|grandson|"
    r"granddaughter|grandmother|grandfather|friend|partner|spouse|aunt|uncle|cousin|neighbor|"
    r"caregiver|fianc[eé]e?|boyfriend|girlfriend|roommate|sibling|child|stepdaughter|stepson)"
)

# Name-rule tokens that are not names even when capitalised (labels and headers).
_HEADER_WORDS = frozenset(
    """
    dob mrn date age sex unit service admission discharge room bed md rn do np pa phd the and
    of dr mr mrs ms miss prof doctor patient name attending signed by cc pcp report note
    """.split()
)

_HOSP_SUFFIX = (
    r"(?:Hospital|Medical[ \t]+Center|Med(?:ical)?\.?[ \t]+Ctr\.?|Health[ \t]+Center|"
    r"Health[ \t]+System|Healthcare|Health[ \t]+Care|Clinic|Infirmary|Medical[ \t]+Group|"
    r"Cancer[ \t]+(?:Center|Institute)|Rehabilitation[ \t]+(?:Center|Hospital|Facility|Institute)|"
    r"Rehab[ \t]+(?:Center|Hospital|Facility)|Nursing[ \t]+(?:Home|Facility|Center)|"
    r"Surgical[ \t]+Center|Surgery[ \t]+Center|Urgent[ \t]+Care|Hospice|Medical[ \t]+Associates|"
    r"Care[ \t]+Center|Health[ \t]+Partners|Physicians[ \t]+Group|Family[ \t]+Practice|"
    r"Memorial|Sanatorium|Skilled[ \t]+Nursing[ \t]+Facility|Dialysis[ \t]+Center)"
)
_HOSP_WORD = rf"(?:{CAP}(?:'s)?|[A-Z]{{2,6}}|St\.|Mt\.)"
# Department words: "Cardiology Clinic" names a service, not a place that identifies anyone.
_DEPARTMENT_WORDS = frozenset(
    """
    cardiology oncology surgery surgical pediatric pediatrics neurology dermatology psychiatry
    pulmonary renal gi ent eye dental medicine internal family primary outpatient inpatient
    emergency walk-in women's womens men's heart cancer diabetes urology orthopedic orthopedics
    hematology nephrology endocrine endocrinology rheumatology infectious disease geriatric
    geriatrics obstetrics gynecology ob gyn ob/gyn vascular transplant wound pain sleep lung
    liver kidney memory anticoagulation coumadin warfarin asthma allergy hiv headache spine
    breast fertility imaging radiology lab laboratory pharmacy physical therapy rehab the a an
    this that our your his her their local nearby same new old outside general community
    """.split()
)

_STREET_SUFFIX = (
    r"(?i:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|way|place|pl|"
    r"terrace|ter|circle|cir|parkway|pkwy|highway|hwy|square|sq|trail|trl|row|path|pike|alley|"
    r"plaza|crescent|cres|loop|run|turnpike|tpke)"
)
_UNIT = r"(?i:apt|apartment|unit|suite|ste|fl|floor|rm|room|bldg|building)"


@dataclass(frozen=True)
class _Rule:
    name: str
    type: str
    priority: int
    pattern: re.Pattern
    group: int = 0
    check: Callable[[re.Match], bool] | None = None


def _digits(s: str) -> int:
    return sum(c.isdigit() for c in s)


def _valid_mdy(m: re.Match) -> bool:
    a, b = int(m.group("a")), int(m.group("b"))
    return (1 <= a <= 12 and 1 <= b <= 31) or (1 <= b <= 12 and 1 <= a <= 31)


def _valid_ymd(m: re.Match) -> bool:
    return 1 <= int(m.group("a")) <= 12 and 1 <= int(m.group("b")) <= 31


def _age_over_89(m: re.Match) -> bool:
    return 90 <= int(m.group(1)) <= 130


def _enough_digits(n: int, group: int = 0) -> Callable[[re.Match], bool]:
    def check(m: re.Match) -> bool:
        return _digits(m.group(group)) >= n

    return check


def _phone_digits(m: re.Match) -> bool:
    return 7 <= _digits(m.group(1)) <= 15


def _c(p: str, flags: int = 0) -> re.Pattern:
    return re.compile(p, flags)


# Priorities: higher wins an overlap. Structured, unambiguous patterns rank above heuristic ones.
_RULES: tuple[_Rule, ...] = (
    _Rule("email", "EMAIL", 100, _c(r"(?<![\w.%+\-])[^\W_][\w.%+\-]*@[^\W_][\w.\-]*\.[A-Za-z]{2,}\b")),
    _Rule("url", "URL", 95, _c(
        r"(?i:\b(?:https?|ftp)://[^\s<>\"']+|\bwww\.[^\s<>\"']+|"
        r"\b[a-z0-9][a-z0-9\-]*(?:\.[a-z0-9\-]+)*\.(?:com|org|net|edu|gov|io|us|info|health|biz|"
        r"co\.uk|uk|ca|me|ly|app)\b(?:/[^\s<>\"']*)?)")),
    _Rule("ip", "IP", 94, _c(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.]\d)")),
    _Rule("ssn", "ID", 92, _c(r"(?<![\d\-])\d{3}-\d{2}-\d{4}(?![\d\-])")),
    _Rule("id_keyword", "ID", 90, _c(
        r"(?i:\b(?:mrn|mr[ \t]*#|mr[ \t]+no|med(?:ical)?\.?[ \t]+rec(?:ord)?\.?(?:[ \t]+(?:number|no|#))?|"
        r"record[ \t]+(?:number|no|#)|acct|account(?:[ \t]+(?:number|no))?|"
        r"encounter(?:[ \t]+(?:number|no|id))?|csn|fin|har|visit[ \t]+(?:number|no|id)|member[ \t]+id|"
        r"policy(?:[ \t]+(?:number|no))?|insurance(?:[ \t]+(?:id|number|no))?|subscriber(?:[ \t]+id)?|"
        r"health[ \t]+plan(?:[ \t]+(?:number|id|no))?|beneficiary(?:[ \t]+(?:number|id|no))?|"
        r"medicaid(?:[ \t]+(?:number|id|no))?|medicare(?:[ \t]+(?:number|id|no))?|"
        r"license(?:[ \t]+(?:number|no))?|lic|dea|npi|serial(?:[ \t]+(?:number|no))?|device[ \t]+id|"
        r"plate|vin|unit[ \t]+(?:no|number)|accession(?:[ \t]+(?:number|no))?|"
        r"specimen(?:[ \t]+(?:number|no|id))?|patient[ \t]+id|pt[ \t]+id|id|ssn|"
        r"social[ \t]+security(?:[ \t]+(?:number|no))?|case[ \t]+(?:number|no)|claim(?:[ \t]+(?:number|no))?|"
        r"job[ \t]+(?:number|no)|certificate(?:[ \t]+(?:number|no))?|chart(?:[ \t]+(?:number|no))?)(?:\b|(?<=#))\.?)"
        r"[ \t]*(?:#|no\.?|num(?:ber)?\.?)?[ \t]*[:#=]?[ \t]*(#?(?=(?:[A-Za-z\-]*\d){4})[A-Za-z0-9][A-Za-z0-9\-]{3,})"),
        group=1, check=_enough_digits(4, group=1)),
    _Rule("phone_context", "PHONE", 88, _c(
        r"(?i:\b(?:phone|tel|telephone|cell|cellphone|mobile|pager|pgr|beeper|fax|ph|call|"
        r"reached[ \t]+at|contact[ \t]+(?:number|no))\b\.?)[ \t]*(?:#|no\.?|number|num)?[ \t]*[:#]?[ \t]*(?:(?i:at)[ \t]+)?"
        r"(\+?\(?\d[\d \t().\-/]{4,18}\d(?:[ \t]*,?[ \t]*(?i:ext\.?|x|extension)[ \t]*\d{1,6})?)"),
        group=1, check=_phone_digits),
    _Rule("pager_context", "PHONE", 85, _c(
        r"(?i:\b(?:pager|pgr|beeper|beep|ext|extension|x)\b\.?)[ \t]*(?:#|no\.?|number)?[ \t]*[:#]?[ \t]*(\d{4,6})(?![\d\-/.])"),
        group=1),
    _Rule("phone", "PHONE", 87, _c(
        r"(?:(?<![\w+])\+?1[ \t.\-]?(?:\(\d{3}\)[ \t\-]*|\d{3}[ \t.\-/])|\(\d{3}\)[ \t\-]*|(?<![\d/.\-])\d{3}[ \t.\-/])"
        r"\d{3}[ \t.\-]\d{4}(?![\d\-])"
        r"(?:[ \t]*,?[ \t]*(?i:ext\.?|x|extension)[ \t]*\d{1,6})?")),
    _Rule("phone_intl", "PHONE", 86, _c(r"(?<![\w+])\+\d{1,3}(?:[ \t.\-]?\(?\d{1,4}\)?){2,5}(?!\d)"),
          check=_enough_digits(8)),
    # Dates. Years alone are allowed by Safe Harbor and left in place.
    _Rule("date_numeric", "DATE", 80, _c(
        r"(?<![\d.,/\-])(?P<a>\d{1,2})(?P<s>[/.\-])(?P<b>\d{1,2})(?P=s)(?:\d{4}|\d{2})(?![\d]|[/.\-]\d)"),
        check=_valid_mdy),
    _Rule("date_iso", "DATE", 80, _c(
        rf"(?<![\d.,/\-]){YEAR4}(?P<s>[/.\-])(?P<a>\d{{1,2}})(?P=s)(?P<b>\d{{1,2}})(?!\d|[/.\-]\d)"),
        check=_valid_ymd),
    _Rule("date_compact", "DATE", 79, _c(
        rf"(?<![\w.]){YEAR4}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(?![\w.])")),
    _Rule("date_mon_d_y", "DATE", 80, _c(
        rf"\b{MON}(?:[ \t]*(?:the[ \t]+)?|[\-/])\d{{1,2}}{ORD}(?:[ \t]*,[ \t]*|[ \t]+|(?<=\d)[\-/])(?:{YEAR4}|'\d{{2}})(?!\d)")),
    _Rule("date_d_mon_y", "DATE", 80, _c(
        rf"\b(?:the[ \t]+)?\d{{1,2}}{ORD}(?:[ \t]+of)?[ \t\-]+{MON}(?:[ \t]*,[ \t]*|[ \t\-]+)(?:{YEAR4}|'?\d{{2}})(?![\d:]|\.\d)")),
    _Rule("date_mon_d", "DATE", 76, _c(
        rf"\b{MON}[ \t]+(?:the[ \t]+)?\d{{1,2}}{ORD}\b(?!:\d|[ \t]*(?:mg|mcg|ml|units?|%|tabs?|hours?|hrs?|days?|weeks?|minutes?|min)\b)")),
    _Rule("date_d_mon", "DATE", 76, _c(
        rf"\b(?:the[ \t]+)?\d{{1,2}}{ORD}(?:[ \t]+of)?[ \t\-]+{MON}(?![a-z])")),
    _Rule("date_mon_y", "DATE", 75, _c(rf"\b{MON}(?:[ \t]*,[ \t]*|[ \t]+|-)(?:of[ \t]+)?(?:{YEAR4}|'\d{{2}})(?!\d)")),
    _Rule("date_m_y", "DATE", 74, _c(rf"(?<![\d/.\-])(?:0?[1-9]|1[0-2])[/\-]{YEAR4}(?![\d/\-])")),
    _Rule("date_m_d_context", "DATE", 73, _c(
        r"(?i:\b(?:on|since|from|until|till|through|thru|dated|dos|admitted|discharged|seen|started|"
        r"stopped|before|after|last|next|of|date|dated|effective|in|for|with|during|around|by)\b:?)[ \t]+"
        r"((?:0?[1-9]|1[0-2])[/\-](?:0?[1-9]|[12]\d|3[01]|\d{2}))(?!\d|[/.\-]\d|[ \t]*(?:tab|tabs|tablet|of|strength|NS|dose))"), group=1),
    _Rule("date_m_yy_compared", "DATE", 73, _c(
        r"(?i:\b(?:compared[ \t]+(?:with|to)|prior|previous|since|s/p[^\n]{0,30}?[ \t]in))[ \t]+"
        r"((?:0?[1-9]|1[0-2])/\d{2})(?!\d|[/.\-]\d)"), group=1),
    # A month on its own after a time preposition: "since November", "in early March".
    _Rule("date_month_only", "DATE", 72, _c(
        r"(?i:\b(?:since|in|during|until|till|from|through|last|this|next|early|late|mid|of|by))[ \t]+"
        r"(?:(?:early|late|mid)[ \t\-]+)?"
        r"((?:January|February|March|April|May|June|July|August|September|October|November|December))\b"
        r"(?![ \t]+(?:\d|of[ \t]+\d))"), group=1),
    _Rule("zip_state", "ZIP", 72, _c(rf"\b{STATE}\.?,?[ \t]+({ZIPNUM})(?!\d)"), group=1),
    _Rule("zip_keyword", "ZIP", 72, _c(rf"(?i:\b(?:zip(?:[ \t]*code)?|postal[ \t]+code)\b)[ \t]*[:#]?[ \t]*({ZIPNUM})(?!\d)"), group=1),
    _Rule("address", "ADDRESS", 70, _c(
        rf"(?<![\w.])\d{{1,6}}[A-Za-z]?(?:-\d+)?[ \t]+(?:[NSEW]\.?[ \t]+)?(?:(?:{CAP}|\d{{1,3}}(?:st|nd|rd|th))[ \t]+){{1,4}}"
        rf"{_STREET_SUFFIX}\b\.?(?:,?[ \t]+(?:{_UNIT}\.?[ \t]*#?[ \t]*[A-Za-z0-9\-]+|#[ \t]*[A-Za-z0-9\-]+))?")),
    _Rule("rural_route", "ADDRESS", 70, _c(
        r"(?<![\w.])\d{1,6}[ \t]+(?:(?:State|County|US|U\.S\.|Rural)[ \t]+)?(?i:route|rte|highway|hwy|road|rd|rr)\.?[ \t]*#?\d{1,4}[A-Z]?\b")),
    # "..., Springfield 01105": a city and ZIP after a comma (street line before), no state.
    _Rule("city_zip_city", "LOCATION", 61, _c(rf"(?<=,[ \t])({CAP}(?:[ \t]+{CAP}){{0,2}})[ \t]+({ZIPNUM})(?!\d)"), group=1),
    _Rule("city_zip_zip", "ZIP", 71, _c(rf"(?<=,[ \t])({CAP}(?:[ \t]+{CAP}){{0,2}})[ \t]+({ZIPNUM})(?!\d)"), group=2),
    _Rule("zip_plus4", "ZIP", 69, _c(r"(?<![\d\-])\d{5}-\d{4}(?![\d\-])")),
    _Rule("po_box", "ADDRESS", 70, _c(r"(?i:\bp\.?[ \t]*o\.?[ \t]*box[ \t]*#?[ \t]*\d+)")),
    _Rule("age_years", "AGE", 68, _c(
        r"\b(\d{2,3})(?=[ \t]*-?[ \t]*(?:years?|yrs?|y)\.?[ \t]*-?[ \t]*(?:old|/o|o(?![a-z])|\.?o\.))"),
        group=1, check=_age_over_89),
    _Rule("age_of_age", "AGE", 68, _c(r"\b(\d{2,3})(?=[ \t]+(?:years?|yrs?)[ \t]+of[ \t]+age)"), group=1,
          check=_age_over_89),
    _Rule("age_y_sex", "AGE", 68, _c(
        r"\b(\d{2,3})[ \t]?(?:y|yo|y/o|yr|yrs)\.?[ \t]*(?=(?:F|M|W|female|male|woman|man|lady|gentleman|gent|pt|patient)\b)"),
        group=1, check=_age_over_89),
    _Rule("age_label", "AGE", 68, _c(r"(?i:\b(?:age|aged))[ \t]*[:=]?[ \t]*(\d{2,3})\b"), group=1,
          check=_age_over_89),
    _Rule("hospital", "HOSPITAL", 66, _c(
        rf"(?:\b(?:St\.?|Saint|Mount|Mt\.?)[ \t]+)?{_HOSP_WORD}(?:[ \t]+(?:(?:of|the|and|&|for)[ \t]+)*{_HOSP_WORD}){{0,5}}"
        rf"[ \t]+{_HOSP_SUFFIX}\b(?:[ \t]+(?:of|at)[ \t]+(?:the[ \t]+)?{_HOSP_WORD}(?:[ \t]+{_HOSP_WORD}){{0,3}})?")),
    _Rule("hospital_of", "HOSPITAL", 65, _c(
        rf"\b(?:Hospital|Medical[ \t]+Center|Clinic|Infirmary)[ \t]+of[ \t]+(?:the[ \t]+)?{_HOSP_WORD}(?:[ \t]+(?:of[ \t]+)?{_HOSP_WORD}){{0,4}}")),
    _Rule("city_state", "LOCATION", 60, _c(
        rf"\b({CAP}(?:[ \t]+{CAP}){{0,2}}),[ \t]*(?P<st>{STATE})\b\.?(?P<zip>[ \t]+{ZIPNUM})?"), group=1),
    _Rule("city_state_zip", "LOCATION", 60, _c(
        rf"\b({CAP}(?:[ \t]+{CAP}){{0,2}})[ \t]+(?P<st>{STATE})\.?,?[ \t]+(?P<zip>{ZIPNUM})(?!\d)"), group=1),
    _Rule("id_long_number", "ID", 40, _c(r"(?<![\d.,/\-])\d{7,}(?![\d]|[.,]\d)")),
    _Rule("id_alnum", "ID", 40, _c(r"\b[A-Z]{1,4}-?\d{5,}[A-Z]?\b")),
    _Rule("id_hyphen_groups", "ID", 39, _c(r"(?<![\w.\-/])\d{2,}(?:-\d+){2,}(?![\w.\-/])"), check=_enough_digits(7)),
    _Rule("id_dictation", "ID", 39, _c(r"\b[A-Z]{1,4}\d{2,}/\d{4,}\b")),
)

_NAME_RULES: tuple[tuple[str, re.Pattern], ...] = (
    ("name_title", _c(rf"\b(?:Dr|Mr|Mrs|Ms|Miss|Mx|Prof|Doctor|DR|MR|MRS|MS)\.?[ \t]+({NAME_VAL})")),
    ("name_label", _c(rf"(?m:(?:^|\b)){_LABELS}[ \t]*:[ \t]*(?:(?:Dr|Mr|Mrs|Ms|Miss)\.?[ \t]+)?({NAME_VAL})")),
    ("name_credential", _c(rf"({NAME_SEQ}|{ALLCAP}(?:[ \t]+(?:{ALLCAP}|[A-Z]\.?)){{1,3}})[ \t]*,?[ \t]+{_CREDENTIALS}(?![A-Za-z])")),
    ("name_relative", _c(
        rf"(?i:\b(?:(?:his|her|their|the[ \t]+patient's|patient's|pt's|pt|my|a)[ \t]+)?){_RELATIVES}[ \t]*,?[ \t]+"
        rf"(?:\(?(?:named[ \t]+)?)({NAME_SEQ})")),
    ("name_with", _c(rf"(?i:\b(?:spoke|spoken|discussed|met|talked|called|consulted)[ \t]+(?:with|to))[ \t]+({NAME_SEQ})")),
    # "Patient Qorvath reports", "The patient, Qorvath, denies": a name after the patient word
    # (catches surnames that are in no lexicon). Ordinary/clinical words are trimmed off the match, so
    # "Patient Active Problem List" and "Patient Education" stay.
    ("name_patient", _c(rf"(?i:\b(?:patient|pt|client))\.?[ \t]*,?[ \t]+(?:(?:Mr|Mrs|Ms|Miss)\.?[ \t]+)?({NAME_SEQ})")),
    ("name_role", _c(rf"\b(?:PCP|HCP|NOK|POA|(?i:attending|resident|intern|fellow|interpreter|chaplain|"
                     rf"nurse|pharmacist|therapist|social[ \t]+worker|case[ \t]+manager|translator))[ \t]+(?:is[ \t]+)?(?:Dr\.?[ \t]+)?({NAME_SEQ})")),
    ("name_by", _c(
        rf"(?i:\b(?:seen|examined|evaluated|written|dictated|signed|reviewed|performed|notes?|read|"
        rf"interpreted|reported|authored|referred|accompanied|transcribed|covered)[ \t]+by)[ \t]+"
        rf"(?:(?:Dr|Mr|Mrs|Ms)\.?[ \t]+)?({NAME_SEQ})")),
    ("name_signature", _c(rf"(?m:^[ \t]*(?:--+|/s/|~~+)[ \t]*({NAME_VAL}))")),
    # "John Smith is a 67 year old ...": the sentence that introduces the patient.
    ("name_is_a", _c(rf"({NAME_SEQ})[ \t]+(?:is|was)[ \t]+an?[ \t]+(?:[a-z\-]+[ \t]+){{0,3}}\d{{1,3}}[ \t\-]*(?:y|yr|year|yo|month)")),
    # "Jane Doe (daughter)": a relative named before the relation.
    ("name_relation_after", _c(rf"({NAME_SEQ})[ \t]*[(,][ \t]*(?:the[ \t]+)?(?:patient's[ \t]+|pt's[ \t]+)?{_RELATIVES}\b")),
)

# Speed: Python's re tries every alternation at every position. A cheap anchored look-ahead
# lets it skip positions that cannot start a match (2x faster on keyword-led rules).
_KEYWORD_LED = {"id_keyword", "phone_context", "pager_context", "date_m_d_context", "date_m_yy_compared",
                "date_month_only", "zip_keyword", "age_label", "name_label", "name_relative", "name_with",
                "name_by", "name_role", "name_title", "name_patient"}
_CAP_LED = {"hospital", "city_state", "city_state_zip", "name_credential", "name_relation_after", "name_is_a"}


def _anchored(name: str, pat: re.Pattern) -> re.Pattern:
    src = pat.pattern
    if name == "name_label":
        src = src.replace("(?m:(?:^|\\b))", "", 1)
    if name in _KEYWORD_LED:
        return re.compile(r"\b(?=[A-Za-z])" + src, pat.flags)
    if name in _CAP_LED:
        return re.compile(rf"\b(?=[{_UP}])" + src, pat.flags)
    return pat


_RULES = tuple(_Rule(r.name, r.type, r.priority, _anchored(r.name, r.pattern), r.group, r.check) for r in _RULES)
_NAME_RULES = tuple((n, _anchored(n, p)) for n, p in _NAME_RULES)

_CAP_TOKEN = _c(rf"\b{CAP}\b")
_FIRST_NAME_RIGHT, _FIRST_NAME_LEFT = names_mod.first_name_context_patterns()
# Eponyms are not PHI: "Graves disease", "Bell's palsy", "Whipple procedure", "Foley catheter".
_EPONYM_AFTER = _c(
    r"(?:'s)?[ \t\-]+(?i:disease|syndrome|palsy|sign|signs|procedure|operation|lymphoma|sarcoma|tumou?r|"
    r"phenomenon|reflex|test|maneuver|manoeuvre|criteria|score|scale|classification|fracture|"
    r"catheter|tube|line|stage|type|ulcer|node|nodes|triad|law|method|repair|shunt|filter|"
    r"esophagus|oesophagus|hernia|cyst|anomaly|deformity|contracture|encephalopathy|"
    r"thyroiditis|neuroma|neuralgia|ileus|hypothesis|body|bodies|cell|cells|murmur|point|lesions?|"
    r"spots?|foot|aphasia|dementia|position|respirations|breathing|pattern|tear|protein|class|depth|"
    r"drain|diverticulum|crisis|solution|formula|equation|pouch|canal|duct|ligament|bundle|"
    r"fibers|nodules?|rings?|spots|bag|mask|splint|cast|view|incision|approach|needle|forceps)\b")
_ALLCAP_PAIR = _c(rf"\b({ALLCAP}),[ \t]*({ALLCAP})\b")
_TOKEN_IN_SPAN = _c(rf"{CAP}|{ALLCAP}|{INITIAL}|[A-Za-z]+")


class PhiScrubber:
    """Finds and replaces PHI. Build once (loads the name lexicon), call on many notes."""

    def __init__(self, config: ScrubConfig | None = None):
        self.config = config or ScrubConfig()
        self.lexicon = names_mod.load_name_lexicon() if self.config.use_name_lexicon else None
        self.extra = self.config.extra_names

    # ------------------------------------------------------------------ name helpers
    def _common(self, low: str) -> bool:
        """An ordinary or header word that must not become a name on context alone."""
        if low in _HEADER_WORDS:
            return True
        if low in self.extra:
            return False
        if self.lexicon is None:
            return False
        return self.lexicon.is_common_word(low) and not self.lexicon.is_name(low)

    def _trim_name(self, text: str, start: int, end: int, strict: bool = True,
                   clinical: bool = False) -> tuple[int, int] | None:
        """Drops leading/trailing tokens of a context match that are ordinary (or header) words;
        `clinical`: also clinical words that are names too ("patient Foley removed")."""
        common = self._common if strict else (lambda w: w in _HEADER_WORDS)
        if clinical:
            plain = common
            common = lambda w: plain(w) or w in names_mod.CLINICAL_NOT_NAMES  # noqa: E731
        toks = [(m.start() + start, m.end() + start) for m in _TOKEN_IN_SPAN.finditer(text[start:end])]
        while toks and common(text[toks[0][0]:toks[0][1]].rstrip(".").lower()):
            toks.pop(0)
        while toks and common(text[toks[-1][0]:toks[-1][1]].rstrip(".").lower()):
            toks.pop()
        if not toks:
            return None
        s, e = toks[0][0], toks[-1][1]
        if e - s == 2 and text[s + 1] == ".":  # a lone initial is not worth a placeholder
            return None
        return s, e

    def _is_seed(self, tok: str) -> bool:
        low = tok.lower()
        if low in self.extra:
            return True
        return bool(self.lexicon and self.lexicon.is_strong_name(low))

    def _is_name_like(self, tok: str) -> bool:
        low = tok.lower()
        return low in self.extra or bool(self.lexicon and self.lexicon.is_name(low))

    def _is_first_name(self, tok: str) -> bool:
        return bool(self.lexicon) and tok.lower() in self.lexicon.first

    def _unknown_cap(self, tok: str) -> bool:
        """A capitalised token that is in no word list: after a first name, a surname."""
        low = tok.lower()
        return not self._common(low) and low not in _HEADER_WORDS and not _EPONYM_AFTER.match(tok)

    def _name_spans(self, text: str) -> list[Span]:
        spans: list[Span] = []
        for rule, pat in _NAME_RULES:
            for m in pat.finditer(text):
                # "FILBERT BRIGHT, M.D.": upper-case words before a credential are a name even if
                # they are also ordinary words; only header words are trimmed there.
                strict = not (rule == "name_credential" and m.group(1).isupper())
                trimmed = self._trim_name(text, m.start(1), m.end(1), strict, clinical=rule == "name_patient")
                if trimmed:
                    spans.append(Span(trimmed[0], trimmed[1], "NAME", rule, 50))
        if self.lexicon is None and not self.extra:
            return spans
        # Lexicon seeds, grown over adjacent name-like tokens and initials ("John A. Smith").
        toks = list(_CAP_TOKEN.finditer(text))
        i = 0
        while i < len(toks):
            if not self._is_seed(toks[i].group()):
                i += 1
                continue
            j = i
            while j > 0 and _adjacent(text, toks[j - 1].end(), toks[j].start()) and self._is_name_like(toks[j - 1].group()):
                j -= 1
            k = i
            while k + 1 < len(toks) and _adjacent(text, toks[k].end(), toks[k + 1].start()) and self._is_name_like(toks[k + 1].group()):
                k += 1
            # philter-lite's first-name context patterns (regex_context.toml: a capitalised word
            # right after a first name, or "Word, " right before one, is a name): extends the
            # span over a surname that no list knows. Ordinary and clinical words never qualify.
            if self._is_first_name(toks[k].group()) and k + 1 < len(toks) \
                    and _FIRST_NAME_RIGHT.match(text, toks[k].end()) \
                    and _adjacent(text, toks[k].end(), toks[k + 1].start()) \
                    and self._unknown_cap(toks[k + 1].group()) \
                    and not _EPONYM_AFTER.match(text, toks[k + 1].end()):
                k += 1
            if self._is_first_name(toks[j].group()) and j > 0 and self._unknown_cap(toks[j - 1].group()):
                # "Qorvath, Mary" (the pattern's leading space stands for any word boundary)
                if _FIRST_NAME_LEFT.fullmatch(" " + text[toks[j - 1].start():toks[j].start()]):
                    j -= 1
            if not _EPONYM_AFTER.match(text, toks[k].end()):
                spans.append(Span(toks[j].start(), toks[k].end(), "NAME", "name_lexicon", 45))
            i = k + 1
        for m in _ALLCAP_PAIR.finditer(text):  # "SMITH, JOHN" headers
            a, b = m.group(1), m.group(2)
            if self._is_name_like(a) and self._is_name_like(b) and (self._is_seed(a) or self._is_seed(b)):
                spans.append(Span(m.start(), m.end(), "NAME", "name_lexicon_caps", 45))
        if self.extra:
            for m in re.finditer(r"\b[A-Z][A-Za-z'\-]+\b", text):
                if m.group().lower() in self.extra:
                    spans.append(Span(m.start(), m.end(), "NAME", "name_user_list", 47))
        return spans

    # ------------------------------------------------------------------ detection
    def find(self, text: str) -> list[Span]:
        """All PHI spans of `text`, non-overlapping and sorted by start."""
        cands: list[Span] = [Span(m.start(), m.end(), "KEEP", "placeholder", 1000) for m in PLACEHOLDER_RE.finditer(text)]
        for rule in _RULES:
            for m in _matches(rule, text):
                s, e = m.span(rule.group)
                if rule.type == "URL":
                    while e > s and text[e - 1] in ".,;:)]}'\"":
                        e -= 1
                if rule.name == "city_state" and not self._good_city(m):
                    continue
                if rule.name.startswith("city_zip") and _ends_with_state(m.group(1)):
                    continue  # "Boston, Massachusetts 02114": the state may stay
                if rule.type == "HOSPITAL" and not self._good_hospital(text[s:e]):
                    continue
                cands.append(Span(s, e, rule.type, rule.name, rule.priority))
        cands += self._name_spans(text)
        return _merge_names(text, _resolve(cands))

    def _good_city(self, m: re.Match) -> bool:
        st = m.group("st")
        if st in ("MD", "PA", "DO", "RN", "NP") and not m.group("zip"):
            return False  # "John Smith, MD" is a credential, not Maryland
        if st in _CLINICAL_ABBR_STATES and not m.group("zip"):
            # Two-letter codes are also clinical abbreviations ("Soft, ND" = non-distended; NC, SC,
            # CA, MS, LA...). Without a ZIP, ask for a city word that is not an ordinary word.
            return not all(self._common(w.lower()) for w in m.group(1).split())
        return True

    def _good_hospital(self, span_text: str) -> bool:
        words = re.findall(r"[A-Za-z][A-Za-z'/\-]*", span_text)
        suffix = set(re.findall(r"[A-Za-z]+", _HOSP_SUFFIX_WORDS))
        proper = [w for w in words if w.lower() not in _DEPARTMENT_WORDS and w not in suffix
                  and w.lower() not in ("of", "at", "and", "for", "st", "saint", "mount", "mt")]
        return bool(proper)

    def scrub(self, text: str, normalize_mimic: bool | None = None) -> tuple[str, Counter]:
        """(scrubbed text, placeholders inserted per PHI type); MIMIC rewriting per config unless given.

        Control and zero-width characters are removed first (data/text_hygiene.py): one inside a
        phone number, an MRN or a name would split it so that no rule matches.
        """
        counts: Counter = Counter()
        text = strip_control_chars(text)
        if self.config.normalize_mimic if normalize_mimic is None else normalize_mimic:
            text, counts = _normalize_mimic(text)
        spans = self.find(text)
        if not spans:
            return text, counts
        out: list[str] = []
        pos = 0
        for sp in spans:
            out.append(text[pos:sp.start])
            out.append(placeholder(sp.type))
            counts[sp.type] += 1
            pos = sp.end
        out.append(text[pos:])
        return "".join(out), counts


_HOSP_SUFFIX_WORDS = (
    "Hospital Medical Center Med Ctr Health System Healthcare Care Clinic Infirmary Group Cancer "
    "Institute Rehabilitation Facility Rehab Nursing Home Surgical Surgery Urgent Hospice "
    "Associates Partners Physicians Family Practice Memorial Sanatorium Skilled Dialysis"
)


# State codes that are also clinical abbreviations: "Soft, ND" (non-distended), "s/p CABG, MI".
_CLINICAL_ABBR_STATES = frozenset(
    "ND NC SC CA MS LA GA ME IN OR OK HI ID DE AL CO MD PA NE MO VA MT UT RI AR MI SD WV NM".split())


def _ends_with_state(words: str) -> bool:
    return any(words == st or words.endswith(" " + st) for st in _STATE_FULL_SET)


def _matches(rule: _Rule, text: str) -> Iterator[re.Match]:
    """finditer, except that a match rejected by `rule.check` does not hide later overlapping ones."""
    if rule.check is None:
        yield from rule.pattern.finditer(text)
        return
    pos = 0
    while (m := rule.pattern.search(text, pos)) is not None:
        if rule.check(m):
            yield m
            pos = max(m.end(), m.start() + 1)
        else:
            pos = m.start() + 1


def _adjacent(text: str, end: int, start: int) -> bool:
    gap = text[end:start]
    return 0 < len(gap) <= 2 and gap.strip(" \t") == ""


def _resolve(cands: list[Span]) -> list[Span]:
    """Keeps the highest-priority (then longest) span of each overlapping group."""
    cands.sort(key=lambda s: (-s.priority, -(s.end - s.start), s.start))
    starts: list[int] = []
    kept: list[Span] = []
    for sp in cands:
        if sp.end <= sp.start:
            continue
        i = bisect.bisect_right(starts, sp.start)
        if i > 0 and kept[i - 1].end > sp.start:
            continue
        if i < len(kept) and kept[i].start < sp.end:
            continue
        starts.insert(i, sp.start)
        kept.insert(i, sp)
    return [s for s in kept if s.type != "KEEP"]


def _merge_names(text: str, spans: list[Span]) -> list[Span]:
    """'Dr. [NAME] [NAME]' -> 'Dr. [NAME]': joins NAME spans separated only by spaces."""
    out: list[Span] = []
    for sp in spans:
        if out and sp.type == "NAME" and out[-1].type == "NAME" and text[out[-1].end:sp.start].strip(" \t,") == "" \
                and "\n" not in text[out[-1].end:sp.start]:
            prev = out.pop()
            sp = Span(prev.start, sp.end, "NAME", prev.rule, prev.priority)
        out.append(sp)
    return out


_DEFAULT: PhiScrubber | None = None


def _scrubber_for(config: ScrubConfig | None) -> PhiScrubber:
    global _DEFAULT
    if config is None or config == ScrubConfig():
        if _DEFAULT is None:
            _DEFAULT = PhiScrubber(ScrubConfig())
        return _DEFAULT
    return PhiScrubber(config)


def find_phi(text: str, config: ScrubConfig | None = None) -> list[Span]:
    """PHI spans in `text` (after no MIMIC rewriting), for evaluation and debugging.

    Offsets index `text` as given, so nothing is removed here: pass text through
    `strip_control_chars` first, as `scrub` does, or a control character can hide a span."""
    return _scrubber_for(config).find(text)


def scrub_text(text: str, config: ScrubConfig | None = None, *, names: Iterable[str] | None = None,
               use_name_lexicon: bool = True) -> tuple[str, dict[str, int]]:
    """Replaces PHI in one note with typed placeholders; returns (text, counts per PHI type).

    `names`: extra name tokens to always scrub (e.g. the health system's patient/staff list).
    For many notes, build a `PhiScrubber` once instead of passing `names` on every call.
    """
    if config is None and (names is not None or not use_name_lexicon):
        toks = frozenset(t.lower() for n in (names or ()) for t in n.split() if len(t) >= 2)
        config = ScrubConfig(use_name_lexicon=use_name_lexicon, extra_names=toks)
    out, counts = _scrubber_for(config).scrub(text)
    return out, dict(counts)
