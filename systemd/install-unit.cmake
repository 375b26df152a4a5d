# Install-time part of systemd/CMakeLists.txt: runs inside cmake_install.cmake,
# where CMAKE_INSTALL_PREFIX is the prefix of this installation (after any
# --prefix) and file(INSTALL) adds $DESTDIR itself.
string(REGEX REPLACE "/+$" "" _prefix "${CMAKE_INSTALL_PREFIX}")   # "/" -> ""

function(_xpl_under_prefix out dir)
  if(IS_ABSOLUTE "${dir}")
    set(${out} "${dir}" PARENT_SCOPE)
  else()
    set(${out} "${_prefix}/${dir}" PARENT_SCOPE)
  endif()
endfunction()

_xpl_under_prefix(_sbindir "${XPL_SBINDIR}")
_xpl_under_prefix(_unitdir "${XPL_UNITDIR}")
if(IS_ABSOLUTE "${XPL_SYSCONFDIR}")
  set(_sysconfdir "${XPL_SYSCONFDIR}")
elseif(XPL_SYSCONFDIR STREQUAL "etc" AND (_prefix STREQUAL "" OR _prefix STREQUAL "/usr"))
  set(_sysconfdir "/etc")
elseif(XPL_SYSCONFDIR STREQUAL "etc" AND _prefix MATCHES "^/opt/(.+)$")
  set(_sysconfdir "/etc/opt/${CMAKE_MATCH_1}")
else()
  set(_sysconfdir "${_prefix}/${XPL_SYSCONFDIR}")
endif()

# The unit, with the paths of this installation.
file(READ "${XPL_UNIT_SOURCE}" _unit)
foreach(_literal "/usr/sbin/xplaind " "/etc/xplaind/xplaind.conf")
  string(FIND "${_unit}" "${_literal}" _at)
  if(_at EQUAL -1)
    message(FATAL_ERROR "${XPL_UNIT_SOURCE} no longer contains '${_literal}': "
                        "update systemd/install-unit.cmake")
  endif()
endforeach()
string(REPLACE "/usr/sbin/xplaind " "${_sbindir}/xplaind " _unit "${_unit}")
string(REPLACE "/etc/xplaind/xplaind.conf" "${_sysconfdir}/xplaind/xplaind.conf" _unit "${_unit}")
file(MAKE_DIRECTORY "${XPL_WORK_DIR}/install")
file(WRITE "${XPL_WORK_DIR}/install/xplaind.service" "${_unit}")
file(INSTALL DESTINATION "${_unitdir}" TYPE FILE FILES "${XPL_WORK_DIR}/install/xplaind.service")

# The template unit, one configuration per instance (/etc/xplaind/%i.conf):
# the same two rewrites.
get_filename_component(_unit_src_dir "${XPL_UNIT_SOURCE}" DIRECTORY)
file(READ "${_unit_src_dir}/xplaind@.service" _unit)
foreach(_literal "/usr/sbin/xplaind " "/etc/xplaind/%i.conf")
  string(FIND "${_unit}" "${_literal}" _at)
  if(_at EQUAL -1)
    message(FATAL_ERROR "${_unit_src_dir}/xplaind@.service no longer contains '${_literal}': "
                        "update systemd/install-unit.cmake")
  endif()
endforeach()
string(REPLACE "/usr/sbin/xplaind " "${_sbindir}/xplaind " _unit "${_unit}")
string(REPLACE "/etc/xplaind/%i.conf" "${_sysconfdir}/xplaind/%i.conf" _unit "${_unit}")
file(WRITE "${XPL_WORK_DIR}/install/xplaind@.service" "${_unit}")
file(INSTALL DESTINATION "${_unitdir}" TYPE FILE FILES "${XPL_WORK_DIR}/install/xplaind@.service")

# The example configuration. An existing, different file is the operator's:
# it stays, and the new example goes beside it as xplaind.conf.dist.
set(_conf "$ENV{DESTDIR}${_sysconfdir}/xplaind/xplaind.conf")
if(EXISTS "${_conf}")
  file(SHA256 "${_conf}" _old)
  file(SHA256 "${XPL_CONF_SOURCE}" _new)
endif()
if(EXISTS "${_conf}" AND NOT _old STREQUAL _new)
  message(STATUS "Keeping the existing ${_conf}; the new example is xplaind.conf.dist beside it")
  file(INSTALL DESTINATION "${_sysconfdir}/xplaind" TYPE FILE FILES "${XPL_CONF_SOURCE}"
       RENAME xplaind.conf.dist)
else()
  file(INSTALL DESTINATION "${_sysconfdir}/xplaind" TYPE FILE FILES "${XPL_CONF_SOURCE}")
endif()
