"""Task registry: the [KV] Table 3 prompts (template + label words) for its 14 tasks.

A template is a string with the slots ``<S1>`` (first sentence), ``<S2>``
(second sentence, pair tasks only) and ``[MASK]`` (the position whose label-word
logits are the model output, [KV] Sec. 3.1). Label words are listed in label
order: label i is predicted by ``label_words[i]``. A causal LM reads the label
word's logits after the text, so a template whose ``[MASK]`` comes before a
sentence (TREC's ``[MASK] : <S1>``, the pair tasks') has a causal form,
``causal_template``, with the same label words at the end (``Task.template_for``).

Files: the four tasks shipped in ``shared/data`` (SST-2, SST-5, Subj, TREC) use
the one-example-per-line ``LABEL SENTENCE`` format; every task can also be read
from ``DATA/<task>/{train,test}.{jsonl,csv,tsv}`` with columns for the text(s)
and the label (see ``realmodels.data.load_table``), so a user who has the
files can run all 14.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ntkcheck.errors import UserError

S1, S2, MASK = "<S1>", "<S2>", "[MASK]"


@dataclass(frozen=True)
class Task:
    """One downstream classification task (or regression when ``num_labels == 1``).

    ``train_file``/``test_file`` name files in the ``LABEL SENTENCE`` format
    relative to the data folder; ``test_file=None`` with ``train_file`` set
    means a single file from which a fixed test set is held out.
    ``label_aliases`` maps raw label strings found in CSV/JSONL files (e.g.
    ``"entailment"``) to label indices.
    """

    name: str
    template: str
    label_words: tuple[str, ...]
    label_names: tuple[str, ...]
    pair: bool = False
    metric: str = "acc"  # "acc", or "f1": binary F1 of the positive class, label 1 ([KV] Table 2)
    train_file: str | None = None
    test_file: str | None = None
    label_aliases: dict = field(default_factory=dict)
    causal_template: str | None = None   # for causal LMs, when ``template`` puts [MASK] before a sentence

    @property
    def num_labels(self) -> int:
        return len(self.label_words)

    def template_for(self, mode: str) -> str:
        """The template of adapter ``mode``: ``causal_template`` for a causal LM when the task has one (the
        label word must follow every sentence it reads), else ``template`` ([KV] Table 3)."""
        return self.causal_template if mode == "causal" and self.causal_template else self.template


_SENT = "<S1> It was [MASK] ."
_NLI = "<S1> ? [MASK] , <S2>"
_PARA = "<S1> [MASK] , <S2>"
# causal forms (not in [KV], which prompts masked LMs): the same label words, read after both sentences
_NLI_CAUSAL = "<S1> Question : <S2> ? Answer : [MASK]"
_PARA_CAUSAL = "<S1> <S2> Same meaning ? [MASK]"

TASKS: dict[str, Task] = {t.name: t for t in [
    Task("sst2", _SENT, ("terrible", "great"), ("negative", "positive"),
         train_file="stsa.binary.train", test_file="stsa.binary.test",
         label_aliases={"negative": 0, "positive": 1}),
    Task("sst5", _SENT, ("terrible", "bad", "okay", "good", "great"),
         ("very negative", "negative", "neutral", "positive", "very positive"),
         train_file="stsa.fine.train", test_file="stsa.fine.test"),
    Task("mr", _SENT, ("terrible", "great"), ("negative", "positive"),
         label_aliases={"negative": 0, "positive": 1}),
    Task("cr", _SENT, ("terrible", "great"), ("negative", "positive"),
         label_aliases={"negative": 0, "positive": 1}),
    Task("mpqa", _SENT, ("terrible", "great"), ("negative", "positive"),
         label_aliases={"negative": 0, "positive": 1}),
    Task("subj", "<S1> This is [MASK] .", ("subjective", "objective"), ("subjective", "objective"),
         train_file="subj.all", test_file=None),
    Task("trec", "[MASK] : <S1>", ("Description", "Entity", "Expression", "Human", "Location", "Number"),
         ("description", "entity", "abbreviation", "human", "location", "number"),
         train_file="TREC.train.all", test_file="TREC.test.all",
         label_aliases={"DESC": 0, "ENTY": 1, "ABBR": 2, "HUM": 3, "LOC": 4, "NUM": 5},
         causal_template="<S1> Category : [MASK]"),
    Task("agnews", "<S1> This article is about [MASK] news .", ("world", "sports", "business", "tech"),
         ("world", "sports", "business", "sci/tech"),
         label_aliases={"World": 0, "Sports": 1, "Business": 2, "Sci/Tech": 3}),
    Task("mnli", _NLI, ("Yes", "Maybe", "No"), ("entailment", "neutral", "contradiction"), pair=True,
         causal_template=_NLI_CAUSAL),
    Task("snli", _NLI, ("Yes", "Maybe", "No"), ("entailment", "neutral", "contradiction"), pair=True,
         causal_template=_NLI_CAUSAL),
    Task("qnli", _NLI, ("Yes", "No"), ("entailment", "not_entailment"), pair=True,
         causal_template=_NLI_CAUSAL),
    Task("rte", _NLI, ("Yes", "No"), ("entailment", "not_entailment"), pair=True,
         causal_template=_NLI_CAUSAL),
    Task("mrpc", _PARA, ("No", "Yes"), ("not_equivalent", "equivalent"), pair=True, metric="f1",
         causal_template=_PARA_CAUSAL),
    Task("qqp", _PARA, ("No", "Yes"), ("not_duplicate", "duplicate"), pair=True, metric="f1",
         causal_template=_PARA_CAUSAL),
]}


def get_task(name: str) -> Task:
    """The registered task ``name`` (case-insensitive, '-' and '_' ignored), else a UserError listing them."""
    key = name.lower().replace("-", "").replace("_", "")
    if key == "ag":
        key = "agnews"
    if key not in TASKS:
        raise UserError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[key]


def custom_task(base: Task, template: str | None = None, label_words: list[str] | None = None) -> Task:
    """``base`` with its template and/or label words replaced (validated by ``check_template``)."""
    # a --template given applies in every mode (its causal form is the user's to write)
    t = replace(base, label_words=tuple(label_words or base.label_words),
                **({"template": template, "causal_template": None} if template else {}))
    if len(t.label_words) != len(base.label_names):
        raise UserError(f"--label-words {','.join(t.label_words)!r}: task {base.name} has "
                        f"{len(base.label_names)} labels ({', '.join(base.label_names)})")
    check_template(t.template, pair=t.pair)
    return t


def check_template(template: str, *, pair: bool, need_mask: bool = True) -> None:
    """Raise UserError naming ``template`` if it lacks ``<S1>``, ``[MASK]`` (when needed) or, for pairs, ``<S2>``."""
    missing = [s for s in ([S1] + ([S2] if pair else []) + ([MASK] if need_mask else [])) if s not in template]
    if missing:
        raise UserError(f"template {template!r} has no {' or '.join(missing)} slot")
    if template.count(MASK) > 1:
        raise UserError(f"template {template!r} has more than one {MASK}")
    if not pair and S2 in template:
        raise UserError(f"template {template!r} uses {S2} but the task has one sentence")
