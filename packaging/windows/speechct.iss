; Inno Setup 6 script for the Windows build of SpeechCT.
; 1. On Windows, in the build venv:   python packaging\build.py --no-archive
;    (PyInstaller writes dist\speechct\ with speechct-app.exe, speechct.exe and _internal\)
; 2. Then:                            iscc packaging\windows\speechct.iss
;    -> dist\speechct-0.1.0-windows-x64-setup.exe
; The installer copies the folder as it is: nothing is downloaded at install or run time. Per-user
; data (settings, study library, recordings, caches) lives under %LOCALAPPDATA%\speechct (platformdirs)
; and is left in place on uninstall.

#define AppName "SpeechCT"
#define AppVersion "0.1.0"
#define Root "..\.."

[Setup]
AppId={{6E0F3C52-8D1B-4C2E-9B7A-53A1C0E4D7B1}
AppName={#AppName}
AppVersion=0.1.0
AppPublisher=SpeechCT
DefaultDirName={autopf}\{#AppName}
DefaultGroupName={#AppName}
; Per-user install by default (no admin rights on locked-down workstations); admins may choose all users.
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
OutputDir={#Root}\dist
OutputBaseFilename=speechct-{#AppVersion}-windows-x64-setup
SetupIconFile=speechct.ico
UninstallDisplayIcon={app}\speechct-app.exe
; lzma2/max: ~1.1 GB of files (mostly torch) compress to ~0.45 GB; solid keeps it one stream
Compression=lzma2/max
SolidCompression=yes
DiskSpanning=no
WizardStyle=modern

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked

[Files]
Source: "{#Root}\dist\speechct\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{group}\{#AppName}"; Filename: "{app}\speechct-app.exe"
Name: "{group}\{#AppName} self-test"; Filename: "{cmd}"; Parameters: "/k ""{app}\speechct.exe"" selftest"
Name: "{group}\Uninstall {#AppName}"; Filename: "{uninstallexe}"
Name: "{autodesktop}\{#AppName}"; Filename: "{app}\speechct-app.exe"; Tasks: desktopicon

[Run]
; Proves the installed copy: bundle hashes, one CT and one speech encoding (about 20 s on a laptop CPU).
Filename: "{app}\speechct.exe"; Parameters: "selftest"; StatusMsg: "Checking the model bundle..."; Flags: runhidden waituntilterminated
Filename: "{app}\speechct-app.exe"; Description: "Start {#AppName}"; Flags: nowait postinstall skipifsilent
