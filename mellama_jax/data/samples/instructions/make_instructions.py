"""Writes the bundled instruction samples (small, synthetic, deterministic), one file per Me-LLaMA
task family and per record format people have:

  qa_pubmedqa.jsonl             ShareGPT / Me-LLaMA `conversations` (human/agent), yes/no/maybe
                                questions with Me-LLaMA's released PubMedQA prompt
  qa_medqa_chat.jsonl           chat `messages` with a system prompt, multiple choice
  extraction_ner.jsonl          chat `messages`, multi-turn (entity list, then a follow-up)
  classification_nli.json       a JSON list of Alpaca records (clinical NLI)
  summarization_abstracts.jsonl Alpaca with `input` (one-sentence summaries)

    python mellama_jax/data/samples/instructions/make_instructions.py

The texts are synthetic (no real patient or article); `pubmedqa_example(rng)` is also what the tests
use to build held-out questions in the same distribution.
"""
from __future__ import annotations

import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(HERE)))))

from mellama_jax.data.samples.make_samples import CONDITIONS, DRUGS, OUTCOMES  # noqa: E402

# Me-LLaMA's PubMedQA instruction (src/preprocess_instruct.py, class PubmedQA), the same text as the
# evaluation's "mellama-release" prompt set.
PUBMEDQA_PROMPT = ("As an expert doctor in clinical science and medical knowledge, can you tell me if the "
                   "following statement is correct? Answer yes, no, or maybe.\n{context}\n{question}\nThe answer is:\n")
_FINDINGS = {
    "yes": ["{d} significantly reduced {o} compared with placebo (hazard ratio {hr}; P<0.001).",
            "Patients receiving {d} had markedly lower {o} than controls (relative risk {hr}, 95% CI {lo}-{hi2})."],
    "no": ["There was no significant difference in {o} between {d} and placebo (hazard ratio {hr1}; P={p}).",
           "{d} did not change {o} compared with usual care (relative risk {hr1}, 95% CI {lo1}-{hi})."],
    "maybe": ["The effect of {d} on {o} was inconsistent across subgroups and the confidence interval was wide "
              "(hazard ratio {hr}, 95% CI {lo}-{hi}).",
              "Results for {o} with {d} were inconclusive; larger trials are needed."],
}


def pubmedqa_example(rng: random.Random) -> tuple[str, list[str], str]:
    """(question, abstract sentences, yes|no|maybe): the label follows from the stated finding."""
    c, d, o = rng.choice(CONDITIONS), rng.choice(DRUGS), rng.choice(OUTCOMES)
    label = rng.choice(["yes", "no", "maybe"])
    hr = round(rng.uniform(0.45, 0.8), 2)
    values = dict(d=d, o=o, hr=hr, lo=round(hr - 0.1, 2), hi2=round(hr + 0.1, 2), hi=round(hr + 0.5, 2),
                  hr1=round(rng.uniform(0.95, 1.05), 2), lo1=round(rng.uniform(0.8, 0.95), 2),
                  p=round(rng.uniform(0.2, 0.9), 2))
    sentences = [f"We studied {rng.randint(60, 4000)} adults with {c} treated with {d} or control.",
                 rng.choice(_FINDINGS[label]).format(**values),
                 f"Adverse events were reported in {rng.randint(2, 30)}% of participants."]
    sentences[1] = sentences[1][0].upper() + sentences[1][1:]
    question = rng.choice([f"Does {d} reduce {o} in patients with {c}?",
                           f"Is {d} effective for lowering {o} in {c}?"])
    return question, sentences, label


def write_jsonl(name: str, records: list[dict]) -> None:
    with open(os.path.join(HERE, name), "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main() -> None:
    rng = random.Random(20240909)
    qa = []
    for i in range(160):
        question, sentences, label = pubmedqa_example(rng)
        prompt = PUBMEDQA_PROMPT.format(context="\n".join(sentences), question=question)
        qa.append({"id": f"pubmedqa{i}", "conversations": [{"from": "human", "value": prompt},
                                                           {"from": "agent", "value": label}],
                   "text": prompt})
    write_jsonl("qa_pubmedqa.jsonl", qa)

    letters = "ABCD"
    mcq = []
    for i in range(40):
        c, d = rng.choice(CONDITIONS), rng.choice(DRUGS)
        options = rng.sample([x for x in CONDITIONS if x != c], 3) + [c]
        rng.shuffle(options)
        answer = letters[options.index(c)]
        body = (f"A patient is started on {d}. Which condition is {d} used for in this case?\n"
                + "\n".join(f"{letters[k]}. {o}" for k, o in enumerate(options)) + "\nAnswer with the option letter.")
        mcq.append({"id": f"medqa{i}", "messages": [
            {"role": "system", "content": "You are a careful medical assistant."},
            {"role": "user", "content": body}, {"role": "assistant", "content": f"{answer}. {c}"}]})
    write_jsonl("qa_medqa_chat.jsonl", mcq)

    ner = []
    for i in range(40):
        c, d, o = rng.choice(CONDITIONS), rng.choice(DRUGS), rng.choice(OUTCOMES)
        note = f"The patient with {c} was given {d}; {o} was monitored daily."
        ner.append({"id": f"ner{i}", "messages": [
            {"role": "user", "content": f"List the problems and treatments mentioned in the note.\n{note}"},
            {"role": "assistant", "content": f"problem: {c}\ntreatment: {d}"},
            {"role": "user", "content": "Which of them is a drug?"},
            {"role": "assistant", "content": d}]})
    write_jsonl("extraction_ner.jsonl", ner)

    nli = []
    for i in range(40):
        c, d = rng.choice(CONDITIONS), rng.choice(DRUGS)
        label = rng.choice(["entailment", "contradiction", "neutral"])
        hyp = {"entailment": f"The patient has {c}.", "contradiction": f"The patient has never had {c}.",
               "neutral": f"The patient's family has a history of {c}."}[label]
        nli.append({"instruction": "Decide whether the hypothesis is entailed by, contradicts or is neutral to "
                                   "the premise. Answer entailment, contradiction or neutral.",
                    "input": f"Premise: Known history of {c}, on {d}.\nHypothesis: {hyp}", "output": label})
    with open(os.path.join(HERE, "classification_nli.json"), "w", encoding="utf-8") as f:
        json.dump(nli, f, ensure_ascii=False, indent=1)

    summ = []
    for i in range(30):
        question, sentences, label = pubmedqa_example(rng)
        summ.append({"instruction": "Summarize the abstract in one sentence.", "input": " ".join(sentences),
                     "output": sentences[1]})
    write_jsonl("summarization_abstracts.jsonl", summ)


if __name__ == "__main__":
    main()
