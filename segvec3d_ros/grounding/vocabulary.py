"""Zero-shot label words; a module of its own so that the pipeline settings import no torch."""

OTHER = 'other'
# The generator's categories (data.scenes.CATEGORIES) and common tabletop objects it does not
# draw, which an instance of those categories should not be mistaken for.
DEFAULT_VOCABULARY = ['box', 'can', 'bottle', 'bowl', 'mug', 'ball', 'book', 'plate', 'banana',
                      'apple', 'keyboard', 'phone']
# Prompts averaged per label, as CLIP-style prompt ensembles do; training used these forms.
PROMPTS = ('{}', 'a {}', 'the {}')
