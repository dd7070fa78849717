"""A library of saved concepts: demonstrations, settings and record, kept to be applied to other datasets.

One directory per concept under the library directory (``CONCEPTSEG_LIBRARY_DIR``, else
``<FiftyOne config dir>/conceptseg/concepts``), holding immutable versions and a pointer to the
current one (see :mod:`conceptseg.runs.library.store`)::

    NAME/current                  the current version's number
    NAME/v1/concept.json          settings, rule, verification, provenance, the demonstration list
    NAME/v1/demos/000.png         a copy of each demonstration image (8-bit RGB PNG)
    NAME/v1/demos/000_mask.png    its concept mask (0/255 PNG; empty = a negative demonstration)
    NAME/v2/...                   a later version (``concepts update``, an overwrite)

``NAME`` is the current version, ``NAME@N`` version N. A reader resolves the version once and
reads everything from its directory, so a concurrent overwrite never mixes two versions.

Nothing is pickled: applying a concept refits its route from these files, so a saved concept
survives the deletion of its source dataset and a library update. An imported zip is fully
validated (names inside the library, no links, bounded sizes, image sizes read from their
headers before any decoding, decodable images, a well-formed manifest) in memory before a
single file is written.

The package's modules: ``concepts`` (names, versions, manifests), ``saving``, ``applying`` (apply and
update), ``zipfiles`` (export and import) and ``store`` (atomic writes); their public names are here.
"""

from conceptseg.runs.library.concepts import (  # noqa: F401
    FORMAT, LibraryError, MAX_FILES, MAX_FILE_BYTES, MAX_PIXELS, MAX_TOTAL_BYTES, MEMBER, NAME,
    Snapshot, VERSION_REF, check_name, delete, exists, library_dir, list_concepts, load, parse_ref,
    resolve, validate_manifest,
)
from conceptseg.runs.library.saving import HUB_ID, save, select_demonstrations  # noqa: F401
from conceptseg.runs.library.applying import (  # noqa: F401
    ApplyInterrupted, SCRATCH_PREFIX, apply, concept_source, demonstration_keys, name_labels,
    read_demonstrations, remove_stale_scratch, scratch_demonstrations, update,
)
from conceptseg.runs.library.zipfiles import export, header_size, import_zip, validate_zip  # noqa: F401
