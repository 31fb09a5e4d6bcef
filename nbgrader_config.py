"""nbgrader configuration of the course (read by `nbgrader ...` run from the course root).

The course directory is build/nbgrader (override with $COURSE_NBGRADER_ROOT); `python -m utils.nbgrader_course
prepare` fills its source/ from solutions/. Assignments are the labs, e.g. `lab_05_number_formats`.
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from nbgrader.converters import GenerateAssignment  # noqa: E402
from nbgrader.preprocessors import ClearSolutions  # noqa: E402

from utils.nbgrader_course import CourseClearSolutions  # noqa: E402

c = get_config()  # noqa: F821 (provided by nbgrader's config loader)

c.CourseDirectory.course_id = "efficient-ai-course"
c.CourseDirectory.root = os.environ.get("COURSE_NBGRADER_ROOT") or str(HERE / "build" / "nbgrader")
c.CourseDirectory.db_url = "sqlite:///" + str(Path(c.CourseDirectory.root) / "gradebook.db")

# the course's stubs (with the exercise number) instead of nbgrader's bare `raise NotImplementedError()`
_DEFAULT = GenerateAssignment.class_traits()["preprocessors"].default()
c.GenerateAssignment.preprocessors = [CourseClearSolutions if p is ClearSolutions else p for p in _DEFAULT]

# grading: a solved lab runs in under a minute on 2 cores; a hung cell is stopped after 120 s
c.Execute.timeout = 120
c.Execute.interrupt_on_timeout = True

