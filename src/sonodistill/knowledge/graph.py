"""A small knowledge graph (organs, findings, locations, descriptors and their relations) loaded from YAML.

Used for entity recognition in report text, entity-aware masking (an entity is masked together with its
1-hop neighbours found in the same text) and for composing a description sentence from predicted findings.
Packaged graphs: `lung` and `carotid` (`sonodistill/knowledge/*.yaml`); any YAML of the same layout loads too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sonodistill.knowledge.normalise import normalise_text
from sonodistill.errors import ConfigError

RELATIONS = ("occurs_in", "located_at", "described_by", "associated_with")


@dataclass(frozen=True)
class Entity:
    """A named entity: canonical `name`, `category`, normalised surface `forms` (the name included)."""

    name: str
    category: str
    forms: tuple[str, ...]
    display: str
    phrase: str | None = None  # organs: how a finding is placed ("in the lung"); default "in the <display>"


@dataclass(frozen=True)
class Mention:
    """Words `[start, end)` of a text that name `entity`."""

    start: int
    end: int
    entity: str


@dataclass
class KnowledgeGraph:
    """Entities by name, directed relations `(head, relation, tail)`, category list and spelling fixes."""

    name: str
    title: str
    categories: list[str]
    entities: dict[str, Entity]
    relations: list[tuple[str, str, str]]
    spelling: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._form_index: dict[tuple[str, ...], str] = {}
        for e in self.entities.values():
            for form in e.forms:
                key = tuple(form.split())
                other = self._form_index.get(key)
                if other is not None and other != e.name:
                    raise ConfigError(f"knowledge graph '{self.name}': form {form!r} names both {other!r} and {e.name!r}")
                self._form_index[key] = e.name
        self._max_form = max((len(k) for k in self._form_index), default=1)
        self._neigh: dict[str, set[str]] = {n: set() for n in self.entities}
        for h, _, t in self.relations:
            self._neigh[h].add(t)
            self._neigh[t].add(h)

    # -- loading --------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> "KnowledgeGraph":
        """Build and validate a graph from the YAML layout; every problem names `source` and the item."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: top level must be a mapping")
        for key in ("name", "categories", "entities", "relations"):
            if key not in data:
                raise ConfigError(f"{source}: missing key '{key}'")
        categories = [str(c) for c in data["categories"]]
        spelling = {str(k).lower(): str(v).lower() for k, v in (data.get("spelling") or {}).items()}
        entities: dict[str, Entity] = {}
        for name, spec in (data["entities"] or {}).items():
            spec = spec or {}
            cat = spec.get("category")
            if cat not in categories:
                raise ConfigError(f"{source}: entity {name!r} has category {cat!r}, not one of {categories}")
            canon = normalise_text(str(name))
            forms = [canon] + [normalise_text(str(f), spelling) for f in spec.get("forms") or []]
            entities[str(name)] = Entity(str(name), str(cat), tuple(dict.fromkeys(f for f in forms if f)),
                                         str(spec.get("display", name)), spec.get("phrase"))
        relations: list[tuple[str, str, str]] = []
        for i, rel in enumerate(data["relations"] or []):
            if not isinstance(rel, (list, tuple)) or len(rel) != 3:
                raise ConfigError(f"{source}: relation {i} must be [head, relation, tail], got {rel!r}")
            h, r, t = (str(x) for x in rel)
            if r not in RELATIONS:
                raise ConfigError(f"{source}: relation {i} {rel!r}: unknown relation {r!r} (known: {RELATIONS})")
            for end in (h, t):
                if end not in entities:
                    raise ConfigError(f"{source}: relation {i} {rel!r} names unknown entity {end!r}")
            relations.append((h, r, t))
        return cls(str(data["name"]), str(data.get("title", data["name"])), categories, entities, relations, spelling)

    # -- structure ------------------------------------------------------------------------------
    def neighbours(self, name: str) -> frozenset[str]:
        """Entities one relation away from `name` (either direction)."""
        self._check(name)
        return frozenset(self._neigh[name])

    def related(self, name: str, relation: str) -> list[str]:
        """Tails of `name --relation-->` in file order."""
        self._check(name)
        return [t for h, r, t in self.relations if h == name and r == relation]

    def of_category(self, category: str) -> list[str]:
        return [n for n, e in self.entities.items() if e.category == category]

    def category_index(self, name: str) -> int:
        self._check(name)
        return self.categories.index(self.entities[name].category)

    def terms(self) -> list[str]:
        """Every surface form (for the tokenizer's corpus, so entity words become whole tokens)."""
        return [f for e in self.entities.values() for f in e.forms]

    def _check(self, name: str) -> None:
        if name not in self.entities:
            raise ConfigError(f"knowledge graph '{self.name}' has no entity {name!r}")

    # -- text -----------------------------------------------------------------------------------
    def words(self, text: str) -> list[str]:
        """Normalised words of a report, with this graph's spelling corrections."""
        return normalise_text(text, self.spelling).split()

    def find_mentions(self, words: Sequence[str]) -> list[Mention]:
        """Entity mentions in normalised words: left to right, the longest matching form at each position."""
        out: list[Mention] = []
        i = 0
        while i < len(words):
            for n in range(min(self._max_form, len(words) - i), 0, -1):
                name = self._form_index.get(tuple(words[i:i + n]))
                if name is not None:
                    out.append(Mention(i, i + n, name))
                    i += n
                    break
            else:
                i += 1
        return out

    def entities_in(self, text: str) -> list[str]:
        """Distinct entities named in a text, in order of first mention."""
        return list(dict.fromkeys(m.entity for m in self.find_mentions(self.words(text))))

    def describe(self, findings: Sequence[str], extras: Mapping[str, str] | None = None,
                 absent: Sequence[str] = ()) -> str:
        """A sentence from findings: grouped by the organ they occur in (`occurs_in`), e.g.
        "Lung ultrasound shows B-lines and consolidation in the lung, and pleural effusion at the pleural line."
        `absent` adds "No X." and `extras` adds "Key: value." sentences (e.g. a severity score)."""
        by_organ: dict[str, list[str]] = {}
        for f in dict.fromkeys(findings):
            self._check(f)
            organs = self.related(f, "occurs_in")
            by_organ.setdefault(organs[0] if organs else "", []).append(self.entities[f].display)
        parts = []
        for organ, names in by_organ.items():
            place = ""
            if organ:
                e = self.entities[organ]
                place = " " + (e.phrase or f"in the {e.display}")
            parts.append(_join(names) + place)
        if parts:
            text = f"{self.title} shows {_join(parts, ', and ' if len(parts) > 1 else ' and ')}."
        else:
            text = f"{self.title} without the annotated findings."
        if absent:
            for f in absent:
                self._check(f)
            text += f" No {_join([self.entities[f].display for f in absent], ' or ')}."
        for key, value in (extras or {}).items():
            text += f" {key[:1].upper() + key[1:]}: {value}."
        return text


def _join(items: Sequence[str], last: str = " and ") -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + last + items[-1]


def available_graphs() -> list[str]:
    """Names of the packaged graphs."""
    return sorted(p.name[:-5] for p in resources.files("sonodistill.knowledge").iterdir() if p.name.endswith(".yaml"))


def load_graph(name_or_path: str | Path = "lung") -> KnowledgeGraph:
    """A packaged graph by name ('lung', 'carotid') or a YAML file path."""
    p = Path(str(name_or_path))
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"knowledge graph file not found: {p}")
        text, source = p.read_text(encoding="utf-8"), str(p)
    else:
        if str(name_or_path) not in available_graphs():
            raise ConfigError(f"no packaged knowledge graph {name_or_path!r}; available: {available_graphs()}")
        res = resources.files("sonodistill.knowledge") / f"{name_or_path}.yaml"
        text, source = res.read_text(encoding="utf-8"), f"sonodistill/knowledge/{name_or_path}.yaml"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML ({exc})") from exc
    return KnowledgeGraph.from_dict(data, source)


# ------------------------------------------------------------------------------------- entity masking
@dataclass
class MaskPlan:
    """Which tokens to mask: `masked` bool `[L]`, `category` int `[L]` (entity category per token, -1 outside
    entities), and the entities chosen as masking seeds (before neighbours were added)."""

    masked: np.ndarray
    category: np.ndarray
    seeds: list[str]


def entity_aware_mask(graph: KnowledgeGraph, words: Sequence[str], word_ids: Sequence[int | None],
                      rng: np.random.Generator, mask_rate: float = 0.15, entity_prob: float = 0.5,
                      seeds: Sequence[str] | None = None) -> MaskPlan:
    """Choose tokens to mask in one encoded text (`word_ids[i]`: word of token i, None for [CLS]/[SEP]/pad).

    Each entity mention becomes a seed with probability `entity_prob` (or exactly the entities in `seeds`);
    every token of a seed mention and of any mention of a graph neighbour of the seed is masked together.
    Then random other word tokens are added until `round(mask_rate * n_word_tokens)` (at least 1) are masked.
    """
    n = len(word_ids)
    masked = np.zeros(n, dtype=bool)
    category = np.full(n, -1, dtype=np.int64)
    token_word = np.array([-1 if w is None else int(w) for w in word_ids], dtype=np.int64)
    eligible = np.flatnonzero(token_word >= 0)
    mentions = graph.find_mentions(words)
    tokens_of = []
    for m in mentions:
        toks = np.flatnonzero((token_word >= m.start) & (token_word < m.end))
        category[toks] = graph.category_index(m.entity)
        tokens_of.append(toks)
    if seeds is None:
        chosen = [m.entity for m in mentions if rng.random() < entity_prob]
    else:
        chosen = list(seeds)
    chosen = list(dict.fromkeys(chosen))
    for seed in chosen:
        group = {seed} | graph.neighbours(seed)
        for m, toks in zip(mentions, tokens_of):
            if m.entity in group:
                masked[toks] = True
    target = max(1, int(round(mask_rate * len(eligible)))) if len(eligible) else 0
    rest = eligible[~masked[eligible]]
    need = target - int(masked.sum())
    if need > 0 and len(rest):
        masked[rng.choice(rest, size=min(need, len(rest)), replace=False)] = True
    return MaskPlan(masked, category, chosen)
