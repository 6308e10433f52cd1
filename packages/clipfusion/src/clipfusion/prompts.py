"""WinCLIP-style compositional prompt ensembles: states × templates, class name from category.

The state words and templates follow WinCLIP (Jeong et al., CVPR 2023) as anomalib's WinCLIP
lists them: 7 normal and 4 anomalous states, 21 templates. A prompt is a template filled with
a state phrase containing the object's name. anomalib's template list repeats
"a jpeg corrupted photo of the {}."; we read the repeat as the "a"/"the" pair its neighbours
form. ``states="extended"`` adds "broken {}" to the anomalous states (this package's earlier
choice, kept as an option).
"""

from __future__ import annotations

NORMAL_STATES = ("{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw",
                 "{} without defect", "{} without damage")
ANOMALOUS_STATES = ("damaged {}", "{} with flaw", "{} with defect", "{} with damage")
EXTENDED_ANOMALOUS_STATES = ("damaged {}", "broken {}", "{} with flaw", "{} with defect",
                             "{} with damage")
TEMPLATES = (
    "a cropped photo of the {}.", "a close-up photo of a {}.", "a close-up photo of the {}.",
    "a bright photo of a {}.", "a bright photo of the {}.", "a dark photo of the {}.",
    "a dark photo of a {}.", "a jpeg corrupted photo of the {}.",
    "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a blurry photo of a {}.",
    "a photo of a {}.", "a photo of the {}.", "a photo of a small {}.",
    "a photo of the small {}.", "a photo of a large {}.", "a photo of the large {}.",
    "a photo of the {} for visual inspection.", "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.", "a photo of a {} for anomaly detection.",
)

# MVTec/VisA folder names that read badly as words
CLASS_NAMES = {"metal_nut": "metal nut", "pipe_fryum": "pipe fryum", "chewinggum": "chewing gum",
               "macaroni1": "macaroni", "macaroni2": "macaroni", "pcb1": "printed circuit board",
               "pcb2": "printed circuit board", "pcb3": "printed circuit board",
               "pcb4": "printed circuit board", "brick": "brick wall", "gravel": "gravel"}


def class_name(category: str) -> str:
    return CLASS_NAMES.get(category, category.replace("_", " "))


def prompt_ensemble(category: str, states: str = "winclip",
                    max_templates: int | None = None) -> dict[str, list[str]]:
    """``{"normal": [...], "anomalous": [...]}``: every state × every template."""
    name = class_name(category)
    templates = TEMPLATES[:max_templates] if max_templates else TEMPLATES
    anomalous = EXTENDED_ANOMALOUS_STATES if states == "extended" else ANOMALOUS_STATES
    return {
        "normal": [t.format(s.format(name)) for s in NORMAL_STATES for t in templates],
        "anomalous": [t.format(s.format(name)) for s in anomalous for t in templates],
    }
