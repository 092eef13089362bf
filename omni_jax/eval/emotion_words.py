"""The default grouping of open-vocabulary emotion words (EMER-OV), written for this project.

Groups follow the primary emotions of Parrott's tree (2001: love, joy, surprise, anger,
sadness, fear), its secondary and tertiary words filed under them, plus the categories the
emotion datasets score apart: disgust and contempt (DFEW, MAFW), neutral, and confusion.
Where the tree files a dataset class under a primary emotion we follow the tree (MAFW's
"disappointed" and "helpless" are sadness, "anxious" is fear), so an answer of "sad" for a
clip described as disappointed counts. Every word form is listed (no stemming): the table is
the whole rule, deterministic and offline. A word in two groups is an error (checked when the
table is read).
"""

GROUPS: dict[str, tuple[str, ...]] = {
    "happiness": ("happy", "joy", "joyful", "joyous", "cheerful", "cheerfulness", "glad", "delighted", "delight",
                  "pleased", "pleasure", "content", "contentment", "satisfied", "satisfaction", "amused",
                  "amusement", "elated", "elation", "excited", "excitement", "enthusiastic", "enthusiasm",
                  "relieved", "relief", "proud", "pride", "optimistic", "optimism", "hopeful", "hope", "ecstatic",
                  "euphoric", "jovial", "gleeful", "glee", "blissful", "bliss", "thrilled", "enjoyment", "grateful",
                  "gratitude", "triumphant", "eager", "playful"),
    "love": ("loving", "affection", "affectionate", "tender", "tenderness", "caring", "fond", "fondness",
             "compassion", "compassionate", "adoration", "longing", "desire", "attraction"),
    "surprise": ("surprised", "amazed", "amazement", "astonished", "astonishment", "shocked", "shock", "startled",
                 "stunned", "astounded", "awe", "incredulous", "disbelief"),
    "sadness": ("sad", "unhappy", "unhappiness", "sorrow", "sorrowful", "grief", "grieving", "depressed",
                "depression", "melancholy", "gloomy", "gloom", "miserable", "misery", "hurt", "heartbroken",
                "despair", "hopeless", "hopelessness", "lonely", "loneliness", "disappointed", "disappointment",
                "dismayed", "dismay", "helpless", "helplessness", "regret", "regretful", "guilt", "guilty", "shame",
                "ashamed", "remorse", "remorseful", "upset", "dejected", "tearful", "sympathy", "pity",
                "embarrassed", "embarrassment", "wistful", "defeated", "powerless", "pained"),
    "anger": ("angry", "mad", "furious", "fury", "rage", "enraged", "irritated", "irritation", "annoyed",
              "annoyance", "frustrated", "frustration", "resentful", "resentment", "hostile", "hostility", "hate",
              "hatred", "hateful", "bitter", "bitterness", "indignant", "indignation", "outraged", "outrage",
              "aggravated", "grumpy", "exasperated", "exasperation", "jealous", "jealousy", "envy", "envious",
              "vengeful", "irate", "impatient", "impatience", "displeased", "displeasure"),
    "disgust": ("disgusted", "revulsion", "repulsed", "loathing", "nauseated", "distaste", "aversion", "revolted"),
    "contempt": ("contemptuous", "disdain", "disdainful", "scorn", "scornful", "sneering", "condescending",
                 "mocking", "sarcastic", "smug", "dismissive", "arrogant"),
    "fear": ("afraid", "scared", "frightened", "fright", "terrified", "terror", "horror", "horrified", "panic",
             "panicked", "anxious", "anxiety", "nervous", "nervousness", "worried", "worry", "uneasy", "unease",
             "apprehensive", "apprehension", "tense", "tension", "alarmed", "alarm", "dread", "fearful", "insecure",
             "timid", "distressed", "distress", "stressed", "stress"),
    "neutral": ("calm", "calmness", "composed", "serene", "peaceful", "relaxed", "indifferent", "indifference",
                "expressionless", "impassive", "blank", "emotionless"),
    "confusion": ("confused", "puzzled", "perplexed", "bewildered", "bewilderment", "baffled", "uncertain",
                  "uncertainty", "doubtful", "doubt"),
}
