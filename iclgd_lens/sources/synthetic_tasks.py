"""Bundled synthetic tasks: offline stand-ins for the papers' six tasks.

Each task uses exactly the real task's prompt template and label words (`HUB_TASKS`), with sentences generated
from a small lexicon and grammar written for this project (lower-case English words, punctuation as separate
words). Every split is seeded, balanced over the classes, free of duplicates and disjoint from the other split.

    sentiment (synth-sst2, synth-sst5): short critic sentences; the class is the level of the evaluative words
    synth-mr: movie-review sentences, positive or negative verbs and adjectives
    synth-subj: plot summaries (objective) vs opinions (subjective)
    synth-agnews: news sentences for World, Sports, Business and Technology
    synth-cb: premise / hypothesis pairs; the hypothesis restates (True), negates (False) or goes beyond (Neither)
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable

from iclgd_lens.sources.hub_tasks import HUB_TASKS
from iclgd_lens.sources.task import Example, Task

SYNTHETIC_TASKS = ("synth-sst2", "synth-sst5", "synth-mr", "synth-subj", "synth-agnews", "synth-cb")
DEFAULT_TRAIN = 4000
DEFAULT_EVAL = 400

# Label words the training mixture may assign to classes besides each task's real ones (tiny_model training);
# listed here so the tokenizer covers them.
# Word tables, one line per group of words.
# fmt: off
EXTRA_LABEL_WORDS = (
    "yes", "no", "maybe", "A", "B", "C", "D", "E", "red", "blue", "green", "yellow", "purple",
    "one", "two", "three", "four", "five", "cat", "dog", "bird", "fish", "horse", "north", "south", "east", "west",
    "Good", "Bad", "Other",
)

# ---------------------------------------------------------------------------------------------- lexicon
FILM_NOUNS = (
    "film", "movie", "story", "drama", "comedy", "thriller", "picture", "script", "plot", "ending", "cast",
    "soundtrack", "sequel", "documentary", "romance", "western", "musical", "debut", "adaptation", "remake",
)
# sentiment levels 0..4 = terrible, bad, neutral, good, great
LEVEL_ADJECTIVES = (
    ("awful", "dreadful", "horrible", "atrocious", "unbearable", "painful", "disastrous", "abysmal", "wretched",
     "appalling", "hideous", "insufferable"),
    ("dull", "weak", "bland", "tedious", "clumsy", "flat", "messy", "forgettable", "tiresome", "shallow", "slow",
     "thin"),
    ("ordinary", "average", "modest", "uneven", "familiar", "routine", "passable", "standard", "mixed", "plain",
     "conventional", "typical"),
    ("nice", "pleasant", "solid", "charming", "enjoyable", "likable", "warm", "clever", "fun", "sweet", "lively",
     "engaging"),
    ("brilliant", "superb", "wonderful", "stunning", "masterful", "magnificent", "dazzling", "extraordinary",
     "gorgeous", "outstanding", "glorious", "breathtaking"),
)
LEVEL_VERDICTS = (
    ("a complete disaster", "a total mess", "a waste of time", "an insult to the audience"),
    ("a disappointment", "a letdown", "hard to sit through", "not worth the ticket"),
    ("neither good nor bad", "just okay", "about what you expect", "fine but forgettable"),
    ("worth a look", "a pleasant surprise", "easy to enjoy", "a good time"),
    ("a true masterpiece", "a triumph", "one of the best of the year", "an instant classic"),
)
INTENSIFIERS = ("quite", "rather", "fairly", "simply", "mostly", "really", "pretty", "somewhat")
ABOUT = (
    "about two brothers", "about a lonely farmer", "about first love", "about an old war", "set in paris",
    "about a small town", "with a large cast", "about a young singer", "set on a ship", "about a family",
    "about a long journey", "set in the desert",
)
PEOPLE = ("the director", "the lead actor", "the young star", "the writer", "the whole cast", "the composer")

MR_POS_ADJ = ("funny", "moving", "smart", "fresh", "gripping", "touching", "sharp", "heartfelt", "witty",
              "tender", "bold", "thrilling")
MR_NEG_ADJ = ("boring", "silly", "lifeless", "sloppy", "pointless", "predictable", "stale", "hollow", "tired",
              "muddled", "lazy", "empty")
MR_POS_VERB = ("delights", "charms", "moves", "thrills", "soars", "shines", "works", "succeeds", "sparkles",
               "excites")
MR_NEG_VERB = ("bores", "drags", "fails", "stumbles", "collapses", "disappoints", "sags", "falters", "annoys",
               "sinks")
MR_POS_PHRASE = ("from start to finish", "at every turn", "with real heart", "in every scene", "with great skill")
MR_NEG_PHRASE = ("from start to finish", "at every turn", "with no heart", "in every scene", "without any skill")
MR_SUBJECTS = ("this film", "the movie", "the story", "the script", "this comedy", "the sequel", "the drama",
               "this picture")

NAMES = ("anna", "tom", "maria", "john", "sarah", "david", "lucy", "peter", "emma", "james", "kate", "paul",
         "nina", "mark", "laura", "sam")
ROLES = ("teacher", "doctor", "farmer", "soldier", "nurse", "lawyer", "painter", "sailor", "student", "baker",
         "pilot", "priest")
PLACES = ("paris", "london", "tokyo", "berlin", "rome", "a village", "the city", "the coast", "the mountains",
          "a farm", "the desert", "an island")
RELATIVES = ("father", "mother", "brother", "sister", "son", "daughter", "uncle", "wife", "husband", "friend")
THINGS = ("job", "house", "money", "letter", "dog", "memory", "ring", "car")
OPINION_STARTS = ("i think", "frankly ,", "honestly ,", "in my view ,", "to me ,", "i feel", "sadly ,",
                  "happily ,")

COUNTRIES = ("france", "china", "iraq", "brazil", "india", "russia", "japan", "egypt", "kenya", "mexico",
             "germany", "iran", "israel", "spain", "turkey", "canada")
WORLD_SUBJ = ("the president", "the prime minister", "the government", "rebels", "troops", "the parliament",
              "the army", "protesters", "the foreign minister", "the united nations")
WORLD_VERB = ("visits", "condemns", "warns", "attacks", "leaves", "enters", "signs a treaty with",
              "holds talks with", "sends aid to", "closes the border with")
WORLD_END = ("after the election", "amid new fighting", "after peace talks", "over the nuclear dispute",
             "as refugees flee", "after a deadly bomb")
TEAMS = ("united", "the rangers", "the lions", "the giants", "the tigers", "the eagles", "the bears",
         "the spurs", "the sharks", "the kings")
SPORTS_VERB = ("beat", "defeat", "edge", "crush", "draw with", "lose to", "stun", "rout")
SPORTS_END = ("in the final", "in the cup", "to win the title", "in extra time", "at home", "in the playoffs",
              "on a late goal", "to end the season")
SPORTS_SUBJ = ("the coach", "the striker", "the champion", "the tennis star", "the olympic team", "the goalkeeper",
               "the golfer", "the captain")
SPORTS_VERB2 = ("wins the marathon", "scores twice", "retires from the league", "signs a new contract",
                "breaks the record", "wins the open", "is injured in training", "leads the team")
SPORTS_WHEN = ("", "on sunday", "this season", "at the olympics", "in the league", "after the match")
BUSINESS_SUBJ = ("the bank", "the retailer", "the carmaker", "the airline", "oil prices", "stocks", "the dollar",
                 "investors", "the insurer", "the steel maker",
                 "the euro", "gold prices", "bond yields", "retail sales")
BUSINESS_VERB = ("rise", "fall", "jump", "slump", "climb", "drop", "gain", "slide")
BUSINESS_END = ("after weak profits", "on strong earnings", "as sales slow", "after the merger",
                "on the stock market", "as interest rates rise", "after a takeover bid", "on higher oil prices")
BUSINESS_SUBJ2 = ("the bank", "the retailer", "the carmaker", "the airline", "the insurer", "the steel maker",
                  "the oil company", "the drug maker", "the food giant", "the media group")
BUSINESS_VERB2 = ("cuts jobs", "reports record profits", "buys a rival", "raises prices", "files for bankruptcy",
                  "sells its stake", "beats forecasts", "plans a merger")
TECH_SUBJ = ("the software maker", "the chipmaker", "a startup", "the search engine", "scientists",
             "the phone maker", "engineers", "hackers")
TECH_VERB = ("launch", "release", "unveil", "test", "build", "update", "hack", "design")
TECH_OBJ = ("a new browser", "a faster chip", "a smart phone", "an online music store", "a space robot",
            "a new laptop", "a wireless network", "a computer virus", "a web search tool", "a video game")
TECH_END = ("for the internet", "for windows users", "to cut power use", "for mobile users", "using open source code",
            "with a new processor")

CB_OBJECTS = ("fence", "letter", "cake", "car", "window", "boat", "song", "book", "garden", "door", "bike",
              "report", "table", "picture", "shed", "dress")
# (past, base) verb forms
CB_VERBS = (("painted", "paint"), ("fixed", "fix"), ("sold", "sell"), ("found", "find"), ("wrote", "write"),
            ("cleaned", "clean"), ("opened", "open"), ("built", "build"), ("moved", "move"), ("bought", "buy"),
            ("washed", "wash"), ("broke", "break"))
CB_MODS = ("old", "red", "small", "new", "broken", "blue", "big", "wooden")
CB_WHERE = ("in the morning", "last week", "before lunch", "yesterday", "after work", "on sunday", "at night",
            "with her friend")
CB_FUTURE = ("will", "wants to", "plans to", "hopes to", "might", "may")
CB_NEG = ("did not", "never", "refused to")


# words written inline in the grammars below
GRAMMAR_WORDS = (
    "the is a an this it feels and makes gives performance ride , . ! result when loses her his she travels to "
    "follows film works as in returns find years later young moves what hard not of someone nobody also"
)
LEXICON = (
    FILM_NOUNS, *LEVEL_ADJECTIVES, *LEVEL_VERDICTS, INTENSIFIERS, ABOUT, PEOPLE, MR_POS_ADJ, MR_NEG_ADJ,
    MR_POS_VERB, MR_NEG_VERB, MR_POS_PHRASE, MR_NEG_PHRASE, MR_SUBJECTS, NAMES, ROLES, PLACES, RELATIVES, THINGS,
    OPINION_STARTS, COUNTRIES, WORLD_SUBJ, WORLD_VERB, WORLD_END, TEAMS, SPORTS_VERB, SPORTS_END, SPORTS_SUBJ,
    SPORTS_WHEN, SPORTS_VERB2, BUSINESS_SUBJ, BUSINESS_VERB, BUSINESS_END, BUSINESS_SUBJ2, BUSINESS_VERB2, TECH_SUBJ,
    TECH_VERB, TECH_OBJ, TECH_END, CB_OBJECTS, CB_VERBS, CB_MODS, CB_WHERE, CB_FUTURE, CB_NEG,
)

# fmt: on


def _pick(rng: random.Random, seq):
    return seq[rng.randrange(len(seq))]


# ---------------------------------------------------------------------------------------------- grammars
def _a(word: str) -> str:
    """The word with its indefinite article."""
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _sentiment(rng: random.Random, level: int) -> str:
    adj = LEVEL_ADJECTIVES[level]
    noun = _pick(rng, FILM_NOUNS)
    form = rng.randrange(6)
    if form == 0:
        return f"the {noun} is {_pick(rng, INTENSIFIERS)} {_pick(rng, adj)} ."
    if form == 1:
        return f"{_a(_pick(rng, adj))} {noun} {_pick(rng, ABOUT)} ."
    if form == 2:
        a, b = rng.sample(adj, 2)
        return f"the {noun} feels {a} and {b} ."
    if form == 3:
        return f"{_pick(rng, PEOPLE)} makes it {_pick(rng, LEVEL_VERDICTS[level])} ."
    if form == 4:
        return f"this {_pick(rng, adj)} {noun} is {_pick(rng, LEVEL_VERDICTS[level])} ."
    return f"{_pick(rng, PEOPLE)} gives a {_pick(rng, adj)} performance ."


def _sst2(rng: random.Random, label: int) -> str:
    return _sentiment(rng, rng.choice((0, 1)) if label == 0 else rng.choice((3, 4)))


def _sst5(rng: random.Random, label: int) -> str:
    return _sentiment(rng, label)


def _mr(rng: random.Random, label: int) -> str:
    adj, verb, phrase = (
        (MR_NEG_ADJ, MR_NEG_VERB, MR_NEG_PHRASE) if label == 0 else (MR_POS_ADJ, MR_POS_VERB, MR_POS_PHRASE)
    )
    form = rng.randrange(4)
    if form == 0:
        return f"{_pick(rng, MR_SUBJECTS)} {_pick(rng, verb)} {_pick(rng, phrase)} ."
    if form == 1:
        a, b = rng.sample(adj, 2)
        return f"{_a(a)} and {b} ride ."
    if form == 2:
        return f"{_pick(rng, PEOPLE)} {_pick(rng, verb)} , and the result is {_pick(rng, adj)} ."
    return f"{_pick(rng, MR_SUBJECTS)} is {_pick(rng, adj)} and {_pick(rng, verb)} {_pick(rng, phrase)} ."


def _subj(rng: random.Random, label: int) -> str:
    name, place, role = _pick(rng, NAMES), _pick(rng, PLACES), _pick(rng, ROLES)
    if label == 0:  # objective
        form = rng.randrange(5)
        if form == 0:
            return f"{name} , a young {role} , moves to {place} ."
        if form == 1:
            return f"when {name} loses her {_pick(rng, THINGS)} , she travels to {place} ."
        if form == 2:
            return f"the film follows {name} and his {_pick(rng, RELATIVES)} in {place} ."
        if form == 3:
            return f"{name} works as a {role} in {place} ."
        return f"years later , {name} returns to {place} to find her {_pick(rng, RELATIVES)} ."
    pool = LEVEL_ADJECTIVES[rng.choice((0, 1, 3, 4))] + (MR_POS_ADJ if rng.random() < 0.5 else MR_NEG_ADJ)
    noun = _pick(rng, FILM_NOUNS)
    form = rng.randrange(5)
    if form == 0:
        return f"{_pick(rng, OPINION_STARTS)} the {noun} is {_pick(rng, pool)} ."
    if form == 1:
        a, b = rng.sample(pool, 2)
        return f"{a} , {b} and {_pick(rng, INTENSIFIERS)} {_pick(rng, pool)} ."
    if form == 2:
        return f"what {_a(_pick(rng, pool))} {noun} !"
    if form == 3:
        return f"{_pick(rng, OPINION_STARTS)} it feels {_pick(rng, INTENSIFIERS)} {_pick(rng, pool)} ."
    return f"it is hard not to find this {noun} {_pick(rng, pool)} ."


def _agnews(rng: random.Random, label: int) -> str:
    form = rng.randrange(2)
    if label == 0:  # World
        a, b = rng.sample(COUNTRIES, 2)
        if form == 0:
            return f"{_pick(rng, WORLD_SUBJ)} of {a} {_pick(rng, WORLD_VERB)} {b} ."
        return f"{_pick(rng, WORLD_SUBJ)} in {a} {_pick(rng, WORLD_VERB)} {b} {_pick(rng, WORLD_END)} ."
    if label == 1:  # Sports
        if form == 0:
            a, b = rng.sample(TEAMS, 2)
            return f"{a} {_pick(rng, SPORTS_VERB)} {b} {_pick(rng, SPORTS_END)} ."
        return f"{_pick(rng, SPORTS_SUBJ)} {_pick(rng, SPORTS_VERB2)} {_pick(rng, SPORTS_WHEN)} ."
    if label == 2:  # Business
        if form == 0:
            return f"{_pick(rng, BUSINESS_SUBJ)} {_pick(rng, BUSINESS_VERB)} {_pick(rng, BUSINESS_END)} ."
        return f"{_pick(rng, BUSINESS_SUBJ2)} {_pick(rng, BUSINESS_VERB2)} {_pick(rng, BUSINESS_END)} ."
    if form == 0:  # Technology
        return f"{_pick(rng, TECH_SUBJ)} {_pick(rng, TECH_VERB)} {_pick(rng, TECH_OBJ)} ."
    return f"{_pick(rng, TECH_SUBJ)} {_pick(rng, TECH_VERB)} {_pick(rng, TECH_OBJ)} {_pick(rng, TECH_END)} ."


def _cb(rng: random.Random, label: int) -> dict[str, str]:
    name = _pick(rng, NAMES)
    obj, other = rng.sample(CB_OBJECTS, 2)
    past, base = _pick(rng, CB_VERBS)
    premise = f"{name} {past} the {_pick(rng, CB_MODS)} {obj} {_pick(rng, CB_WHERE)} ."
    if label == 0:  # True: a restatement
        hypothesis = f"{name} {past} the {obj}" if rng.random() < 0.7 else f"someone {past} the {obj}"
    elif label == 1:  # False: a negation
        hypothesis = (
            f"{name} {_pick(rng, CB_NEG)} {base} the {obj}" if rng.random() < 0.8 else f"nobody {past} the {obj}"
        )
    else:  # Neither: something the premise does not say
        if rng.random() < 0.5:
            hypothesis = f"{name} {_pick(rng, CB_FUTURE)} {base} the {other}"
        else:
            hypothesis = f"{name} also {past} the {other}"
    return {"premise": premise, "hypothesis": hypothesis}


_GRAMMARS: dict[str, tuple[str, Callable[[random.Random, int], object]]] = {
    "synth-sst2": ("sst2", _sst2),
    "synth-sst5": ("sst5", _sst5),
    "synth-mr": ("mr", _mr),
    "synth-subj": ("subj", _subj),
    "synth-agnews": ("agnews", _agnews),
    "synth-cb": ("cb", _cb),
}


# ---------------------------------------------------------------------------------------------- tasks
def synthetic_task(name: str, seed: int = 0, n_train: int = DEFAULT_TRAIN, n_eval: int = DEFAULT_EVAL) -> Task:
    """A seeded synthetic task with the real task's template and label words; train and eval are disjoint."""
    if name not in _GRAMMARS:
        raise ValueError(f"unknown synthetic task {name!r}; valid: {list(SYNTHETIC_TASKS)}")
    if n_train < 1 or n_eval < 1:
        raise ValueError(f"n_train and n_eval must be positive, got {n_train} and {n_eval}")
    real, grammar = _GRAMMARS[name]
    spec = HUB_TASKS[real]
    n_classes = len(spec.label_words)
    fields = [f for f in ("sentence", "text", "premise", "hypothesis") if "{" + f + "}" in spec.template]
    # The task name enters the seed so that two tasks with the same seed do not share their random stream.
    rng = random.Random(f"{name}:{seed}")
    rows: list[Example] = []
    seen: set[tuple] = set()
    want = n_train + n_eval
    attempts = 0
    while len(rows) < want:
        attempts += 1
        if attempts > 50 * want:
            raise ValueError(f"task {name!r}: the grammar cannot produce {want} distinct examples")
        label = len(rows) % n_classes  # balanced classes
        out = grammar(rng, label)
        row = {f: " ".join(v.split()) for f, v in (out.items() if isinstance(out, dict) else [(fields[0], out)])}
        key = tuple(row[f] for f in fields)
        if key in seen:
            continue
        seen.add(key)
        row["label"] = label
        rows.append(row)
    train, evaluation = rows[:n_train], rows[n_train:]
    rng.shuffle(train)
    rng.shuffle(evaluation)
    return Task(
        name=name,
        template=spec.template,
        label_words=spec.label_words,
        train=tuple(train),
        eval=tuple(evaluation),
        eval_split="eval",
    )


def synthetic_vocabulary() -> list[str]:
    """Every word the synthetic tasks, the real templates and the label-word pool can produce (sorted)."""
    texts = [literal for spec in HUB_TASKS.values() for literal, *_ in string.Formatter().parse(spec.template)]
    texts += [w for spec in HUB_TASKS.values() for w in spec.label_words]
    texts += [*EXTRA_LABEL_WORDS, GRAMMAR_WORDS]
    for lexicon in LEXICON:
        for item in lexicon:
            texts += item if isinstance(item, tuple) else [item]
    return sorted({piece for text in texts for word in text.split() for piece in _split_punctuation(word)})


def _split_punctuation(word: str) -> list[str]:
    pieces, current = [], ""
    for ch in word:
        if ch.isalnum():
            current += ch
        else:
            if current:
                pieces.append(current)
            pieces.append(ch)
            current = ""
    if current:
        pieces.append(current)
    return pieces
